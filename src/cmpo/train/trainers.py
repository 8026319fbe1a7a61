"""SFT, per-attribute cDPO and CMPO trainers on ``transformers.Trainer``.

The Trainer's model is a :class:`PolicyModel`: its ``forward`` returns per-sequence response log-probs, so the
whole computation runs through the (DDP/FSDP/DeepSpeed-wrapped) module's forward and ``accelerate launch``
works unchanged. Losses are in :mod:`cmpo.train.losses`; log-probs in :mod:`cmpo.train.logprobs`.

Checkpoints (``checkpoint-N/``) hold only the trainable tensors (``model.safetensors``) plus the Trainer's
optimizer/scheduler/RNG/data-order state, so ``resume`` continues a killed run exactly.
"""

from __future__ import annotations

import os
import tempfile
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn as nn
from transformers import Trainer

from cmpo.train.logprobs import sequence_logprobs, token_logprobs, token_logprobs_unlikelihood
from cmpo.train.losses import preference_loss

TRAINABLE_WEIGHTS = "model.safetensors"


class PolicyModel(nn.Module):
    """``forward(input_ids, attention_mask, response_mask [N, T], weights [N, k] | None, reference, per_token)``
    -> log-probs [N] (or ``(token_logp [M], rows [M])`` with ``per_token=True``).

    ``model``: a PluralLM, a peft model or a plain HF causal LM. ``ref_model``: a frozen separate reference
    (full fine-tuning without precomputed reference log-probs); otherwise ``reference=True`` uses the
    adapters-off path of ``model``.
    """

    accepts_loss_kwargs = True  # lets the Trainer count response tokens (SFT ``labels``) across accumulation

    def __init__(self, model: nn.Module, chunk_size: int = 1024, ref_model: nn.Module | None = None):
        super().__init__()
        self.model = model
        self.ref_model = ref_model
        self.chunk_size = chunk_size
        if ref_model is not None:
            ref_model.requires_grad_(False)
            ref_model.eval()

    def forward(self, input_ids, attention_mask, response_mask, weights=None, reference: bool = False,
                per_token: bool = False, unlikelihood: bool = False, **unused):
        model = self.model
        if unlikelihood:  # per-token (logp, unlikelihood, rows) of the policy
            if reference:
                raise ValueError("the unlikelihood term is a policy term; it has no reference variant")
            return token_logprobs_unlikelihood(model, input_ids, attention_mask, response_mask, weights=weights,
                                               chunk_size=self.chunk_size)
        if reference and self.ref_model is not None:
            model, reference = self.ref_model, False
        fn = token_logprobs if per_token else sequence_logprobs
        return fn(model, input_ids, attention_mask, response_mask, weights=weights, reference=reference,
                  chunk_size=self.chunk_size)


def _atomic_save_file(tensors: dict, path: Path, metadata: dict | None = None) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".tmp-", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata or {"format": "pt"})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class _CmpoTrainerBase(Trainer):
    """Saves/loads only trainable tensors (safetensors) and logs averaged custom metrics."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        unwrapped = self.accelerator.unwrap_model(self.model)
        self._trainable = [n for n, p in unwrapped.named_parameters() if p.requires_grad]
        if not self._trainable:
            raise ValueError("the model has no trainable parameters")
        self._metrics = {"train": defaultdict(lambda: [0.0, 0.0]), "eval": defaultdict(lambda: [0.0, 0.0])}

    # ------------------------------------------------------------------ metrics
    def _record(self, name: str, total: torch.Tensor, count: torch.Tensor) -> None:
        """Accumulate a (sum, count) pair, summed over processes."""
        mode = "train" if self.model.training else "eval"
        pair = torch.stack([total.detach().float().sum(), count.detach().float().sum()]).to(self.args.device)
        pair = self.accelerator.reduce(pair, reduction="sum") if self.accelerator.num_processes > 1 else pair
        acc = self._metrics[mode][name]
        acc[0] += pair[0].item()
        acc[1] += pair[1].item()

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if "loss" in logs else "eval"
        prefix = "eval_" if mode == "eval" else ""
        for name, (total, count) in self._metrics[mode].items():
            if count > 0:
                logs[prefix + name] = total / count
        self._metrics[mode].clear()
        super().log(logs, start_time)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    # ------------------------------------------------------------------ checkpoints
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = Path(output_dir or self.args.output_dir)
        if not self.args.should_save:
            return
        if state_dict is None:
            state_dict = self.accelerator.unwrap_model(self.model).state_dict()
        tensors = {k: state_dict[k].detach().contiguous().cpu() for k in self._trainable}
        _atomic_save_file(tensors, output_dir / TRAINABLE_WEIGHTS, {"format": "pt", "cmpo": "trainable"})
        torch.save(self.args, output_dir / "training_args.bin")

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        from safetensors.torch import load_file

        path = Path(resume_from_checkpoint) / TRAINABLE_WEIGHTS
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: not a cmpo training checkpoint")
        model = self.accelerator.unwrap_model(model or self.model)
        sd = load_file(path)
        missing = sorted(set(self._trainable) - set(sd))
        _, unexpected = model.load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise ValueError(f"{path}: missing {missing[:5]}, unexpected {list(unexpected)[:5]}")

    def _load_best_model(self) -> None:
        self._load_from_checkpoint(self.state.best_model_checkpoint)


class SFTTrainer(_CmpoTrainerBase):
    """Mean negative log-likelihood of the response tokens over the whole (accumulated, all-process) batch.

    With ``weights`` in the batch (plural SFT warm start), each example is scored under its own λ.
    ``unlikelihood_weight`` γ adds γ · Σ_{c ∈ C_t} −log(1 − p(c)) per token (C_t: the response's earlier
    tokens; :func:`cmpo.train.logprobs.token_logprobs_unlikelihood`), averaged the same way as the NLL.
    """

    loss_is_scaled_for_ga = True

    def __init__(self, *args, unlikelihood_weight: float = 0.0, **kwargs):
        if unlikelihood_weight < 0:
            raise ValueError(f"unlikelihood_weight must be >= 0, got {unlikelihood_weight}")
        super().__init__(*args, **kwargs)
        self.unlikelihood_weight = unlikelihood_weight

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs.pop("labels", None)
        args = (inputs["input_ids"], inputs["attention_mask"], inputs["response_mask"])
        if self.unlikelihood_weight:
            logp, ul, _ = model(*args, weights=inputs.get("weights"), unlikelihood=True)
        else:
            (logp, _), ul = model(*args, weights=inputs.get("weights"), per_token=True), None
        nll = -logp.sum()
        total = nll if ul is None else nll + self.unlikelihood_weight * ul.sum()
        if num_items_in_batch is None:  # evaluation: this batch's own mean
            loss = total / max(1, logp.numel())
        else:
            loss = total / num_items_in_batch
            if self.args.average_tokens_across_devices and self.accelerator.num_processes > 1:
                loss = loss * self.accelerator.num_processes  # DDP averages gradients over processes
        n = torch.tensor(float(logp.numel()))
        self._record("nll_per_token", nll, n)
        if ul is not None:
            self._record("unlikelihood_per_token", ul.sum().detach(), n)
        return (loss, {"loss": loss}) if return_outputs else loss


class PreferenceTrainer(_CmpoTrainerBase):
    """cDPO (one attribute's pairs) and CMPO (λ-conditioned pairs, per-example λ in ``weights`` [B, k])."""

    loss_is_scaled_for_ga = False  # per-batch mean: the Trainer divides by the accumulation steps

    def __init__(self, *args, beta: float = 0.5, epsilon: float = 0.1, loss_type: str = "sigmoid",
                 chosen_nll_weight: float = 0.0, chosen_unlikelihood_weight: float = 0.0,
                 attributes: list[str] | None = None, **kwargs):
        if chosen_unlikelihood_weight < 0:
            raise ValueError(f"chosen_unlikelihood_weight must be >= 0, got {chosen_unlikelihood_weight}")
        super().__init__(*args, **kwargs)
        self.beta, self.epsilon, self.loss_type = beta, epsilon, loss_type
        self.chosen_nll_weight = chosen_nll_weight
        self.chosen_unlikelihood_weight = chosen_unlikelihood_weight
        self.attributes = attributes

    def pair_loss(self, model, inputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """-> (per-pair loss [B], metrics); with ``chosen_nll_weight`` the chosen NLL is under the pair's λ;
        ``chosen_unlikelihood_weight`` γ adds γ · (the chosen response's token-level unlikelihood) / |y_c|."""
        ids, am, rm = inputs["input_ids"], inputs["attention_mask"], inputs["response_mask"]
        b = ids.shape[0] // 2
        weights = inputs.get("weights")
        w2 = torch.cat([weights, weights]) if weights is not None else None
        if "ref_chosen" in inputs:
            ref_c, ref_r = inputs["ref_chosen"], inputs["ref_rejected"]
        else:
            with torch.no_grad():
                ref = model(ids, am, rm, reference=True)
            ref_c, ref_r = ref[:b], ref[b:]
        n_chosen = rm[:b].sum(1)
        if not self.chosen_unlikelihood_weight:
            logp = model(ids, am, rm, weights=w2)
            return preference_loss(logp[:b], logp[b:], ref_c, ref_r, self.beta, self.epsilon, self.loss_type,
                                   self.chosen_nll_weight, n_chosen)
        tok_logp, tok_ul, rows = model(ids, am, rm, weights=w2, unlikelihood=True)
        logp = tok_logp.new_zeros(ids.shape[0]).index_add(0, rows, tok_logp)
        ul = tok_ul.new_zeros(ids.shape[0]).index_add(0, rows, tok_ul)[:b] / n_chosen.clamp(min=1).to(tok_ul.dtype)
        loss, metrics = preference_loss(logp[:b], logp[b:], ref_c, ref_r, self.beta, self.epsilon, self.loss_type,
                                        self.chosen_nll_weight, n_chosen)
        metrics["unlikelihood/chosen_per_token"] = ul.detach()
        return loss + self.chosen_unlikelihood_weight * ul, metrics

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        losses, metrics = self.pair_loss(model, inputs)
        loss = losses.mean()
        n = torch.tensor(float(losses.numel()))
        for name, value in metrics.items():
            self._record(name, value, n)
        weights = inputs.get("weights")
        if weights is not None and self.attributes:
            acc = metrics["rewards/accuracies"]
            for j, attr in enumerate(self.attributes):
                on = (weights[:, j] > 0).float()
                self._record(f"rewards/accuracies/{attr}", acc * on, on)
        return (loss, {"loss": loss}) if return_outputs else loss


# ---------------------------------------------------------------------- reference log-probs


def model_fingerprint(name_or_path: str) -> str:
    """Identity of a model for cache keys: the resolved path plus size/mtime of its weight files."""
    from cmpo.models.loading import resolve_model_path

    path = Path(resolve_model_path(name_or_path))
    if not path.is_dir():
        return str(name_or_path)
    parts = [str(path.resolve())]
    for f in sorted(path.glob("*.safetensors")):
        st = f.stat()
        parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
    return "|".join(parts)


@torch.no_grad()
def precompute_reference(policy: PolicyModel, ds, collator, cache_file: Path, batch_size: int = 8,
                         device: str | torch.device = "cpu"):
    """Add ``ref_chosen``/``ref_rejected`` (π_ref response log-probs) to a tokenized pairs dataset.

    Computed once in dataset order and cached in ``cache_file`` (safetensors, atomic write).
    """
    from safetensors.torch import load_file
    from tqdm.auto import tqdm

    cache_file = Path(cache_file)
    if cache_file.exists():
        ref = load_file(cache_file)["ref"]
        if ref.shape[0] != len(ds):
            raise ValueError(f"{cache_file}: {ref.shape[0]} rows cached but the dataset has {len(ds)}")
    else:
        was_training = policy.training
        policy.eval()
        out = []
        for start in tqdm(range(0, len(ds), batch_size), desc="reference log-probs"):
            rows = [ds[i] for i in range(start, min(len(ds), start + batch_size))]
            batch = {k: v.to(device) for k, v in collator(rows).items()}
            logp = policy(batch["input_ids"], batch["attention_mask"], batch["response_mask"], reference=True)
            b = len(rows)
            out.append(torch.stack([logp[:b], logp[b:]], dim=1).cpu())
        policy.train(was_training)
        ref = torch.cat(out) if out else torch.zeros(0, 2)
        _atomic_save_file({"ref": ref.contiguous()}, cache_file)
    ds = ds.add_column("ref_chosen", ref[:, 0].tolist())
    return ds.add_column("ref_rejected", ref[:, 1].tolist())
