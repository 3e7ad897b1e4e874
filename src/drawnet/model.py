"""The DRAW network (paper sections 2-3): the readable reference path.

Every line of the recurrence carries the paper's equation number. Speed-ups live elsewhere and
are tested against this file.

With ``DRAWConfig.conditional`` the model is class-conditional (not in the paper): the one-hot label
y joins the encoder's input of eq. (5) and the decoder's input of eqs (7) and (14) at every step,
so the bound of eq. (12) is one of -log p(x | y) and generation draws the class asked for.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import attention, losses
from .attention import Window
from .config import DRAWConfig, check_image_batch


class DRAWState(NamedTuple):
    """The recurrent state after step t (immutable; ``step`` returns a new one)."""

    canvas: Tensor  # c_t, canvas logits (batch, C, H, W)
    h_enc: Tensor  # h^enc_t (batch, enc_size)
    c_enc: Tensor  # encoder LSTM cell state (batch, enc_size)
    h_dec: Tensor  # h^dec_t (batch, dec_size)
    c_dec: Tensor  # decoder LSTM cell state (batch, dec_size)


class StepOutput(NamedTuple):
    """What one inference step produces besides the new state."""

    mu: Tensor  # (batch, Z), eq. (1)
    log_sigma: Tensor  # (batch, Z), eq. (2): sigma = exp(log_sigma)
    z: Tensor  # (batch, Z), eq. (6)
    read_window: Window | None  # read attention parameters, None without read attention
    write_window: Window | None  # write attention parameters, None without write attention


class DRAWOutput(NamedTuple):
    """A pass of the full model over a batch (inference + reconstruction)."""

    canvas: Tensor  # c_T logits (batch, C, H, W)
    mu: Tensor  # (T, batch, Z)
    log_sigma: Tensor  # (T, batch, Z)
    z: Tensor  # (T, batch, Z)
    canvases: Tensor | None  # sigma(c_t) after every step (T, batch, C, H, W), if asked for
    read_windows: Window | None  # each field (T, batch), if asked for and read attention is on
    write_windows: Window | None  # likewise for the write attention


class Generation(NamedTuple):
    """Images generated from the prior (eqs 13-16)."""

    canvases: Tensor  # sigma(c~_t) after every step (T, n, C, H, W); canvases[-1] is the mean image
    write_windows: Window | None  # each field (T, n); None without write attention


def _stack_windows(windows: list[Window | None]) -> Window | None:
    if not windows or windows[0] is None:
        return None
    return Window(*(torch.stack(field) for field in zip(*windows, strict=True)))


def _cat(*parts: Tensor | None) -> Tensor:
    """Concatenate along the features, leaving out the parts that are None (no label)."""
    return torch.cat([p for p in parts if p is not None], dim=1)


def noise_like(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise; from ``generator`` (on its own device) when given, else the global RNG."""
    if generator is None:
        return torch.randn(shape, dtype=like.dtype, device=like.device)
    eps = torch.randn(shape, dtype=like.dtype, device=generator.device, generator=generator)
    return eps.to(like.device)


class LayerNormLSTMCell(nn.Module):
    """An LSTM cell with layer normalisation (Ba, Kiros & Hinton 2016, arXiv:1607.06450, eqs 20-22):

        [i, f, g, o] = LN(W_x x) + LN(W_h h) + b,   c' = sigma(f) c + sigma(i) tanh(g),
        h' = sigma(o) tanh(LN(c')),

    each LN with its own gain (and, for c', bias). Gate order and call signature as torch.nn.LSTMCell.
    Used for RNN^enc and RNN^dec when ``DRAWConfig.layer_norm`` is set (not part of the DRAW paper).
    """

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        bound = hidden_size**-0.5  # nn.LSTMCell's initialisation
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size).uniform_(-bound, bound))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(4 * hidden_size))
        self.ln_ih = nn.LayerNorm(4 * hidden_size, bias=False)  # the gate bias is ``bias``
        self.ln_hh = nn.LayerNorm(4 * hidden_size, bias=False)
        self.ln_c = nn.LayerNorm(hidden_size)

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        h, c = state
        gates = self.ln_ih(x @ self.weight_ih.t()) + self.ln_hh(h @ self.weight_hh.t()) + self.bias
        i, f, g, o = gates.chunk(4, dim=1)
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h_new = torch.sigmoid(o) * torch.tanh(self.ln_c(c_new))
        return h_new, c_new


class DRAW(nn.Module):
    """Deep Recurrent Attentive Writer (Gregor et al. 2015, arXiv:1502.04623)."""

    def __init__(self, config: DRAWConfig):
        super().__init__()
        self.config = config
        C, H, W = config.image_shape
        # The read vector: [x, x_hat] whole (eq. 17) or two N x N glimpses per channel (eq. 27).
        read_size = 2 * C * (H * W if config.read_n is None else config.read_n**2)
        write_size = C * (H * W if config.write_n is None else config.write_n**2)

        if config.conditional and config.num_classes is None:
            raise ValueError(
                "a conditional DRAW needs num_classes (the number of classes of its labels); set it, or let "
                "drawnet.tasks.fit_to_data take it from the training data"
            )
        # Conditional model (not in the paper): the one-hot label y (K values) is an extra input of both
        # LSTMs, placed before h^dec in the encoder's input: [r_t, y, h^dec_{t-1}] and [z_t, y].
        K = config.num_classes if config.conditional else 0
        cell = LayerNormLSTMCell if config.layer_norm else nn.LSTMCell
        self.encoder = cell(read_size + K + config.dec_size, config.enc_size)  # RNN^enc, eq. (5)
        self.decoder = cell(config.z_size + K, config.dec_size)  # RNN^dec, eq. (7)
        self.posterior = nn.Linear(config.enc_size, 2 * config.z_size)  # eqs (1)-(2): mu, log sigma
        self.write_out = nn.Linear(config.dec_size, write_size)  # eq. (18) or the patch w_t of eq. (28)
        # Eq. (21): five attention parameters from h^dec. The write has its own layer, separate from
        # the one producing w_t (eq. 29's gamma^, F^).
        self.read_params = nn.Linear(config.dec_size, 5) if config.read_n is not None else None
        self.write_params = nn.Linear(config.dec_size, 5) if config.write_n is not None else None
        if config.attention_sigma_init:
            # Departure from the paper (which gives no initialisation): start with sigma = delta/2 so
            # neighbouring filters overlap; see attention.initial_log_sigma2 and docs/DESIGN.md,
            # "Initialising the attention".
            with torch.no_grad():
                for layer, n in ((self.read_params, config.read_n), (self.write_params, config.write_n)):
                    if layer is not None:
                        layer.bias[2] = attention.initial_log_sigma2(n, W, H)

        # Learned initial values c_0, h^enc_0, h^dec_0 ("learned biases", section 2.1). Departure:
        # the LSTM cell states start at learned biases too; the paper names only the hidden vectors.
        # c_0 starts at config.canvas_init (0 unless set; the paper gives no initialisation).
        self.canvas0 = nn.Parameter(torch.full((C, H, W), float(config.canvas_init)))
        self.h_enc0 = nn.Parameter(torch.zeros(config.enc_size))
        self.c_enc0 = nn.Parameter(torch.zeros(config.enc_size))
        self.h_dec0 = nn.Parameter(torch.zeros(config.dec_size))
        self.c_dec0 = nn.Parameter(torch.zeros(config.dec_size))
        # Training only, not part of the model: set by clipping_attention_gradient (None: no clipping).
        self.attention_clip: attention.GradientClip | None = None

    @contextlib.contextmanager
    def clipping_attention_gradient(self, clip: attention.GradientClip | None) -> Iterator[None]:
        """Within the block, the backward of passes run here clips the gradient w.r.t. the raw
        attention parameters of eq. (21) (TrainConfig.attention_grad_clip; ours, not the paper's)."""
        if clip is not None and self.read_params is None and self.write_params is None:
            raise ValueError("clipping the attention gradient needs a model with attention (read_n or write_n set)")
        saved, self.attention_clip = self.attention_clip, (clip if clip is not None and clip.active else None)
        try:
            yield
        finally:
            self.attention_clip = saved

    # ------------------------------------------------------------------ pieces of one step
    def initial_state(self, batch: int) -> DRAWState:
        """c_0, h^enc_0, h^dec_0 (and cell states) broadcast to the batch."""
        C, H, W = self.config.image_shape
        return DRAWState(
            canvas=self.canvas0.expand(batch, C, H, W),
            h_enc=self.h_enc0.expand(batch, -1),
            c_enc=self.c_enc0.expand(batch, -1),
            h_dec=self.h_dec0.expand(batch, -1),
            c_dec=self.c_dec0.expand(batch, -1),
        )

    def read(self, x: Tensor, x_hat: Tensor, h_dec_prev: Tensor) -> tuple[Tensor, Window | None]:
        """Eq. (4): the read vector r_t and, with attention, its window."""
        if self.read_params is None:
            return torch.cat([x.flatten(1), x_hat.flatten(1)], dim=1), None  # (17): [x, x_hat]
        n, (_, H, W) = self.config.read_n, self.config.image_shape
        raw = attention.clip_gradient(self.read_params(h_dec_prev), self.attention_clip)  # (21); clip: ours
        window = attention.window_from_raw(raw, n, W, H)  # (22)-(24)
        F_X, F_Y = attention.filterbank_from_window(window, n, W, H)  # (19)-(20), (25)-(26)
        return attention.read_attention(x, x_hat, F_X, F_Y, window.gamma), window  # (27)

    def write(self, h_dec: Tensor) -> tuple[Tensor, Window | None]:
        """Eq. (8)'s write(h^dec_t): the canvas increment (batch, C, H, W) and its window."""
        B = h_dec.shape[0]
        C, H, W = self.config.image_shape
        if self.write_params is None:
            return self.write_out(h_dec).view(B, C, H, W), None  # (18)
        n = self.config.write_n
        patch = self.write_out(h_dec).view(B, C, n, n)  # (28): w_t, (batch, C, N, N)
        raw = attention.clip_gradient(self.write_params(h_dec), self.attention_clip)  # (21), own layer; clip: ours
        window = attention.window_from_raw(raw, n, W, H)  # (22)-(24)
        F_X, F_Y = attention.filterbank_from_window(window, n, W, H)
        return attention.write_attention(patch, F_X, F_Y, window.gamma), window  # (29)

    def posterior_params(self, h_enc: Tensor) -> tuple[Tensor, Tensor]:
        """Eqs (1)-(2): mu_t = L(h^enc_t), sigma_t = exp(L(h^enc_t)); returns (mu, log sigma)."""
        mu, log_sigma = self.posterior(h_enc).chunk(2, dim=1)
        return mu, log_sigma

    def label_input(self, labels: Tensor | None, batch: int, like: Tensor) -> Tensor | None:
        """The one-hot y (batch, K) of a conditional model's ``labels`` (batch,); None for an unconditional
        model. Raises a ValueError for labels missing, of the wrong shape or out of range, or given to an
        unconditional model."""
        if not self.config.conditional:
            if labels is not None:
                raise ValueError("this DRAW model is unconditional (conditional=false): it takes no labels")
            return None
        K = self.config.num_classes
        if labels is None:
            raise ValueError(f"this DRAW model is class-conditional: pass labels, a (batch,) tensor of class indices "
                             f"in [0, {K})")
        if labels.dim() != 1 or labels.shape[0] != batch or labels.is_floating_point() or labels.is_complex():
            raise ValueError(f"labels must be a ({batch},) tensor of integer class indices, got {labels.dtype} "
                             f"of shape {tuple(labels.shape)}")
        lo, hi = torch.aminmax(labels)
        if lo < 0 or hi >= K:
            raise ValueError(f"labels must be class indices in [0, {K}) (the model's num_classes), got values in "
                             f"[{lo.item()}, {hi.item()}]")
        return F.one_hot(labels.long(), K).to(device=like.device, dtype=like.dtype)

    def step(
        self,
        x: Tensor,
        prev: DRAWState,
        generator: torch.Generator | None = None,
        eps: Tensor | None = None,
        y: Tensor | None = None,
    ) -> tuple[DRAWState, StepOutput]:
        """One DRAW iteration, eqs (3)-(8). ``eps`` (batch, Z) fixes the noise of eq. (6) if given;
        ``y`` (batch, K) is a conditional model's one-hot label (:meth:`label_input`)."""
        x_hat = x - torch.sigmoid(prev.canvas)  # (3)  x^_t = x - sigma(c_{t-1})
        # (4): read from x, not x_t: the image does not change over time (docs/DESIGN.md, Reading from x).
        r, read_window = self.read(x, x_hat, prev.h_dec)
        # (5); a conditional model's encoder also sees y: RNN^enc(h^enc_{t-1}, [r_t, y, h^dec_{t-1}])
        h_enc, c_enc = self.encoder(_cat(r, y, prev.h_dec), (prev.h_enc, prev.c_enc))
        mu, log_sigma = self.posterior_params(h_enc)  # (1), (2)
        if eps is None:
            eps = noise_like(mu.shape, mu, generator)
        z = mu + torch.exp(log_sigma) * eps  # (6), fresh noise every t
        h_dec, c_dec = self.decoder(_cat(z, y), (prev.h_dec, prev.c_dec))  # (7); conditional: [z_t, y]
        increment, write_window = self.write(h_dec)
        canvas = prev.canvas + increment  # (8)  c_t = c_{t-1} + write(h^dec_t)
        return DRAWState(canvas, h_enc, c_enc, h_dec, c_dec), StepOutput(
            mu, log_sigma, z, read_window, write_window
        )

    # ------------------------------------------------------------------ whole sequences
    def check_input(self, x: Tensor) -> None:
        """Raise a ValueError unless ``x`` is a (batch, C, H, W) float tensor with values in [0, 1]."""
        check_image_batch(x, self.config.image_shape, "DRAWConfig")
        lo, hi = torch.aminmax(x)
        if lo < 0 or hi > 1:
            raise ValueError(
                f"the Bernoulli likelihood (eq. 9) needs pixel values in [0, 1], got values in "
                f"[{lo.item():.4g}, {hi.item():.4g}]; scale the images to [0, 1] first"
            )

    def forward(
        self,
        x: Tensor,
        *,
        keep_steps: bool = False,
        generator: torch.Generator | None = None,
        noise: Tensor | None = None,
        labels: Tensor | None = None,
    ) -> DRAWOutput:
        """Run the T steps of inference and reconstruction on ``x`` (batch, C, H, W) in [0, 1].

        ``noise`` (T, batch, Z), if given, is the standard normal noise of eq. (6) for every step
        (the trainer passes it so that runs split across processes draw exactly the same noise);
        otherwise it is drawn step by step from ``generator`` or the global RNG.
        With ``keep_steps`` the output also holds sigma(c_t) and the attention windows of every step.
        ``labels`` (batch,): the class of each image, for a conditional model (and only for one).
        """
        self.check_input(x)
        y = self.label_input(labels, x.shape[0], x)
        if noise is not None:
            expected = (self.config.T, x.shape[0], self.config.z_size)
            if tuple(noise.shape) != expected:
                raise ValueError(f"noise must have shape (T, batch, z_size) = {expected}, got {tuple(noise.shape)}")
        state = self.initial_state(x.shape[0])
        steps: list[StepOutput] = []
        canvases: list[Tensor] = []
        for t in range(self.config.T):
            state, out = self.step(x, state, generator, None if noise is None else noise[t], y)
            steps.append(out)
            if keep_steps:
                canvases.append(torch.sigmoid(state.canvas))
        return DRAWOutput(
            canvas=state.canvas,
            mu=torch.stack([s.mu for s in steps]),
            log_sigma=torch.stack([s.log_sigma for s in steps]),
            z=torch.stack([s.z for s in steps]),
            canvases=torch.stack(canvases) if keep_steps else None,
            read_windows=_stack_windows([s.read_window for s in steps]) if keep_steps else None,
            write_windows=_stack_windows([s.write_window for s in steps]) if keep_steps else None,
        )

    def loss(self, x: Tensor, noise: Tensor | None = None, *, labels: Tensor | None = None) -> dict[str, Tensor]:
        """The bound of eqs (9)-(12) in nats per image, as a dict of tensors (see losses.loss_terms);
        for a conditional model, given ``labels`` (batch,), a bound on -log p(x | y).

        ``noise`` (T, batch, Z): optional fixed noise for eq. (6), as in :meth:`forward`. This is the
        readable path; :func:`drawnet.engine.choose` gives an engine whose ``loss`` may run the
        optimised recurrence instead (same loss and gradients, tested against this file).
        """
        out = self(x, noise=noise, labels=labels)
        return losses.loss_terms(out.canvas, x, out.mu, out.log_sigma)

    @torch.no_grad()
    def generate(
        self, n: int, generator: torch.Generator | None = None, *, labels: Tensor | None = None
    ) -> Generation:
        """Draw ``n`` images from the prior with the decoder alone (eqs 13-16).

        Noise comes from ``generator`` when given (so the global RNG, and with it training, is
        untouched), else from the global RNG. Returns the mean image sigma(c~_t) after every step.
        A conditional model draws image i of class ``labels[i]`` (``labels``: (n,) class indices).
        """
        if n <= 0:
            raise ValueError(f"number of samples must be positive, got {n}")
        state = self.initial_state(n)
        canvas, h_dec, c_dec = state.canvas, state.h_dec, state.c_dec
        y = self.label_input(labels, n, h_dec)
        canvases: list[Tensor] = []
        windows: list[Window | None] = []
        for _ in range(self.config.T):
            z = noise_like((n, self.config.z_size), h_dec, generator)  # (13) z~_t ~ N(0, I)
            h_dec, c_dec = self.decoder(_cat(z, y), (h_dec, c_dec))  # (14); conditional: [z~_t, y]
            increment, window = self.write(h_dec)
            canvas = canvas + increment  # (15)
            canvases.append(torch.sigmoid(canvas))  # the mean of D(X | c~_t), as the paper shows
            windows.append(window)
        return Generation(canvases=torch.stack(canvases), write_windows=_stack_windows(windows))
