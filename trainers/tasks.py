"""Downstream tasks evaluated on a trial's model: built-in tasks and a user hook.

**Contract.** A task is a callable ``task(model, tokenizer) -> dict`` returning at least ``acc`` (in
[0, 1]); optional ``acc_norm``, ``task_loss`` (mean negative log-likelihood, nats per token, of the
correct continuation), ``n_items`` and ``tokens`` (tokens run through the model, for the
evaluation's FLOPs: ``eval_flops = 2 * N * tokens``). ``model(idx)`` maps token ids (B, T) to
logits (B, T, vocab) — the trainers' GPT does; ``tokenizer`` is whatever the trial uses (None for
the byte-level built-in corpus). A task may carry a ``chance`` attribute (its chance accuracy).

**Built-in tasks** (no download; built deterministically from a validation token stream, e.g. the
built-in corpus's validation split):

- ``next_line``: LAMBADA-style completion of the last word of a line: the context is the text
  before it (up to the model's window), the target is the final identifier-like word
  (``[A-Za-z0-9_]``, 3–12 bytes) of the line. ``acc``: every target byte is the greedy prediction
  given the true prefix (lm-evaluation-harness's "is greedy"); chance 0.
- ``cloze``: 4-way multiple choice: the context ends at the start of a line's text; the true
  rest of the line (up to 24 bytes) against three copies of it with two adjacent bytes transposed
  twice each (the same bytes: unigram statistics cannot tell them apart). ``acc``: the choice
  with the highest total log-likelihood is the true one; ``acc_norm``: per-byte; chance 1/4.
- ``cloze_lines``: the same with other lines' continuations as the wrong choices (needs the
  context's meaning; at chance for models of ~1e5 parameters); chance 1/4.

**User tasks**: ``load_task("package.module:name")`` imports ``name`` from a module; it must be a
task as above, or a zero-argument factory returning one when its name starts with ``make_``.
``load_task`` and :func:`run_task` raise :class:`TaskError` naming the task and the problem.

**Command tasks** (a lab's own harness, any language): ``"command:NAME=PROGRAM ARGS..."`` runs the
program on a model checkpoint and reads its metrics from a JSON file (:class:`CommandTask`):
placeholders ``{checkpoint}`` (a directory), ``{tokenizer}`` (a ``tokenizer.json``, or empty for
byte tokens), ``{out}`` (the JSON file to write: an object with ``acc`` and the optional keys
above, ``chance`` too), ``{python}`` (scalesweep's interpreter) and ``{seq_len}``; the same
values are in the environment as ``SCALESWEEP_TASK_CHECKPOINT``, ``..._TOKENIZER``, ``..._OUT``.
Exit status 0, else the task fails naming the status and the stderr tail. The built-in
trainers write the checkpoint with :func:`save_task_checkpoint` (``model.pt`` + ``model.json``;
the llama families also a Hugging Face ``hf/`` directory) and :func:`load_task_model` reads it
back; a user's trainer passes its own checkpoint (:func:`evaluate_tasks`).

>>> import numpy as np
>>> text = "".join(f"    value_{i} = compute({i}, scale={i % 7})\\n" for i in range(200))
>>> stream = np.frombuffer(text.encode(), dtype=np.uint8)
>>> task = cloze_task(stream, seq_len=64, n_items=8)
>>> task.chance, len(task.items)
(0.25, 8)

Long because the built-in tasks, a user's task hook and command tasks share one contract (`task(model,
tokenizer) -> dict`), its checks and its report.
"""
from __future__ import annotations

import importlib
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

if TYPE_CHECKING:
    import torch

NEWLINE = 10
WORD_BYTES = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
BUILTIN = ("next_line", "cloze", "cloze_lines")
COMMAND_PREFIX = "command:"
TASK_PLACEHOLDERS = ("checkpoint", "tokenizer", "out", "python", "seq_len")
STDERR_TAIL = 2000  # characters of a failed command task's stderr in its error


class TaskError(ValueError):
    """A task that cannot be loaded or returned bad metrics; the message names it."""


@dataclass(frozen=True)
class Item:
    """One question: a context and candidate continuations (``answer`` indexes the true one)."""

    context: np.ndarray
    choices: tuple[np.ndarray, ...]
    answer: int = 0


@dataclass
class Task:
    """A built-in task: items scored by log-likelihood (``kind`` = "choice") or greedy match ("greedy")."""

    name: str
    kind: str
    items: list[Item]
    chance: float
    seq_len: int
    batch_size: int = 32
    meta: dict[str, Any] = field(default_factory=dict)

    def __call__(self, model: Callable[[torch.Tensor], torch.Tensor], tokenizer: Any = None) -> dict[str, float]:
        """Evaluate on ``model`` (no gradients); see the module docstring for the metrics."""
        seqs, owners = [], []
        for i, item in enumerate(self.items):
            for j, choice in enumerate(item.choices):
                seqs.append((item.context, choice))
                owners.append((i, j))
        scores = _score(model, seqs, self.seq_len, self.batch_size)
        n = len(self.items)
        total = np.full((n, max(len(it.choices) for it in self.items)), -np.inf)
        per_tok = total.copy()
        greedy = np.zeros(n, bool)
        nll, n_tok = 0.0, 0
        for (i, j), (logp, length, exact) in zip(owners, scores):
            total[i, j] = logp
            per_tok[i, j] = logp / length
            if j == self.items[i].answer:
                nll -= logp
                n_tok += length
                greedy[i] = exact
        answers = np.array([it.answer for it in self.items])
        tokens = int(sum(min(len(c) + len(ch), self.seq_len) for c, ch in seqs))
        if self.kind == "greedy":
            out = {"acc": float(greedy.mean())}
        else:
            out = {"acc": float(np.mean(total.argmax(1) == answers)),
                   "acc_norm": float(np.mean(per_tok.argmax(1) == answers))}
        out.update({"task_loss": nll / max(n_tok, 1), "n_items": float(n), "tokens": float(tokens)})
        return out


def _score(model, seqs: Sequence[tuple[np.ndarray, np.ndarray]], seq_len: int,
           batch_size: int) -> list[tuple[float, int, bool]]:
    """Per (context, continuation): summed log-prob of the continuation, its length, greedy match."""
    import torch  # here, not at import: the spec validates task names without loading torch

    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    device = next(model.parameters()).device if hasattr(model, "parameters") else torch.device("cpu")
    out: list[tuple[float, int, bool]] = []
    try:
        with torch.no_grad():
            for start in range(0, len(seqs), batch_size):
                batch = seqs[start:start + batch_size]
                rows, spans = [], []
                for ctx, cont in batch:
                    # the model sees at most seq_len tokens: keep the continuation, cut the context's start
                    full = np.concatenate([ctx, cont]).astype(np.int64)[-(seq_len + 1):]
                    rows.append(full)
                    spans.append(len(cont))
                width = max(len(r) for r in rows) - 1
                idx = torch.zeros((len(rows), width), dtype=torch.long)
                for k, r in enumerate(rows):
                    idx[k, :len(r) - 1] = torch.from_numpy(r[:-1])
                logits = model(idx.to(device)).float()
                logp = torch.log_softmax(logits, dim=-1).cpu()
                for k, (r, m) in enumerate(zip(rows, spans)):
                    pos = torch.arange(len(r) - 1 - m, len(r) - 1)
                    tgt = torch.from_numpy(r[-m:])
                    lp = logp[k, pos, tgt]
                    exact = bool(torch.equal(logp[k, pos].argmax(-1), tgt))
                    out.append((float(lp.sum()), m, exact))
    finally:
        if was_training and hasattr(model, "train"):
            model.train()
    return out


def _lines(stream: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) of every line of the stream (end excludes the newline)."""
    nl = np.flatnonzero(stream == NEWLINE)
    starts = np.concatenate([[0], nl + 1])[:-1]
    return [(int(s), int(e)) for s, e in zip(starts, nl) if e > s]


def _spread(candidates: list, n: int) -> list:
    """n candidates evenly spaced over the list (deterministic)."""
    if len(candidates) <= n:
        return list(candidates)
    return [candidates[int(i)] for i in np.linspace(0, len(candidates) - 1, n).round().astype(int)]


def next_line_task(stream: np.ndarray, seq_len: int, n_items: int = 200, min_word: int = 3,
                   max_word: int = 12) -> Task:
    """The built-in completion task (see the module docstring) from a validation token stream."""
    stream = np.asarray(stream)
    cands = []
    for s, e in _lines(stream):
        k = e
        while k > s and int(stream[k - 1]) in WORD_BYTES:
            k -= 1
        length = e - k
        # a word that ends the line, preceded by something (not the whole line), with enough context
        if min_word <= length <= max_word and k > s and k >= seq_len // 2:
            cands.append((k, e))
    if not cands:
        raise TaskError("task next_line: the stream has no line ending in a word of "
                        f"{min_word}-{max_word} bytes after {seq_len // 2} tokens of context")
    items = [Item(stream[max(0, k - seq_len):k], (stream[k:e],), 0) for k, e in _spread(cands, n_items)]
    return Task("next_line", "greedy", items, chance=0.0, seq_len=seq_len,
                meta={"candidates": len(cands)})


def cloze_task(stream: np.ndarray, seq_len: int, n_items: int = 200, n_choices: int = 4, span: int = 24,
               min_span: int = 8, distractors: str = "swap") -> Task:
    """The built-in multiple-choice task (see the module docstring) from a validation token stream.

    ``distractors="swap"``: each wrong choice is the true continuation with two adjacent bytes
    transposed twice (same bytes, same length: only a model that learned sequential structure
    tells them apart). ``"lines"``: the wrong choices are other lines' continuations (harder: it
    needs the context's meaning; near chance for models of ~1e5 parameters).
    """
    if distractors not in ("swap", "lines"):
        raise TaskError(f"task cloze: unknown distractors {distractors!r}; use 'swap' or 'lines'")
    name = "cloze" if distractors == "swap" else "cloze_lines"
    stream = np.asarray(stream)
    cands = []
    for s, e in _lines(stream):
        k = s
        while k < e and stream[k] in (32, 9):  # the indentation belongs to the context
            k += 1
        # a swap needs two distinct adjacent bytes somewhere in the span
        if e - k >= min_span and k >= seq_len // 2 and np.any(np.diff(stream[k:min(e, k + span)]) != 0):
            cands.append((k, min(e, k + span)))
    if len(cands) < n_choices:
        raise TaskError(f"task {name}: {len(cands)} usable line(s) in the stream, need at least {n_choices}")
    picked = _spread(cands, n_items)
    items = []
    for i, (k, e) in enumerate(picked):
        true = stream[k:e]
        others = _swapped(true, n_choices - 1, seed=i) if distractors == "swap" else \
            _other_lines(stream, picked, i, n_choices - 1, name)
        answer = i % n_choices  # the true continuation's position rotates: no position bias
        choices = others[:answer] + [true] + others[answer:]
        items.append(Item(stream[max(0, k - seq_len):k], tuple(choices), answer))
    return Task(name, "choice", items, chance=1.0 / n_choices, seq_len=seq_len,
                meta={"candidates": len(cands), "n_choices": n_choices, "distractors": distractors})


def _swapped(true: np.ndarray, k: int, seed: int, swaps: int = 2) -> list[np.ndarray]:
    """k distinct copies of ``true``, each with ``swaps`` transpositions of unequal adjacent bytes."""
    rng = np.random.default_rng(seed)
    where = np.flatnonzero(np.diff(true) != 0)
    out: list[np.ndarray] = []
    for _ in range(1000):
        c = true.copy()
        for j in rng.choice(where, size=min(swaps, len(where)), replace=False):
            c[j], c[j + 1] = c[j + 1], c[j]
        if not np.array_equal(c, true) and not any(np.array_equal(c, o) for o in out):
            out.append(c)
            if len(out) == k:
                return out
    raise TaskError(f"task cloze: cannot make {k} distinct corrupted copies of a {len(true)}-byte span")


def _other_lines(stream: np.ndarray, picked: list, i: int, k: int, name: str) -> list[np.ndarray]:
    """k distinct continuations of other items (a fixed stride through the list)."""
    m = len(picked)
    true = stream[picked[i][0]:picked[i][1]]
    out: list[np.ndarray] = []
    step = max(1, m // (k + 1))
    j = i
    while len(out) < k:
        j = (j + step) % m
        if j == i:
            step += 1  # cycled without enough distinct lines: widen the stride
            if step > m:
                raise TaskError(f"task {name}: too few distinct lines for the distractors")
            continue
        cand = stream[picked[j][0]:picked[j][1]]
        if not np.array_equal(cand, true) and not any(np.array_equal(cand, o) for o in out):
            out.append(cand)
    return out


def builtin_task(name: str, stream: np.ndarray, seq_len: int, n_items: int = 200) -> Task:
    """A built-in task by name (``next_line``, ``cloze`` or ``cloze_lines``)."""
    if name == "next_line":
        return next_line_task(stream, seq_len, n_items)
    if name in ("cloze", "cloze_lines"):
        return cloze_task(stream, seq_len, n_items, distractors="swap" if name == "cloze" else "lines")
    raise TaskError(f"unknown built-in task {name!r}; built-in tasks: {', '.join(BUILTIN)}")


def load_task(ref: str, *, stream: np.ndarray | None = None, seq_len: int | None = None,
              n_items: int = 200) -> Callable:
    """A task from a reference: a built-in name (``cloze``, ``builtin:cloze``; needs ``stream`` and
    ``seq_len``) or ``package.module:name`` (a task callable, or a factory whose name starts with
    ``make_``, called with no arguments)."""
    if ref.startswith(COMMAND_PREFIX):
        return CommandTask.from_ref(ref, seq_len=seq_len)
    name = ref.removeprefix("builtin:")
    if name in BUILTIN or ref.startswith("builtin:"):
        if stream is None or seq_len is None:
            raise TaskError(f"task {ref!r}: a built-in task needs the validation stream and seq_len")
        return builtin_task(name, stream, seq_len, n_items)
    obj, attr = _import_ref(ref)
    if attr.startswith("make_"):
        try:
            obj = obj()
        except Exception as exc:
            raise TaskError(f"task {ref!r}: the factory failed: {exc}") from exc
    if not callable(obj):
        raise TaskError(f"task {ref!r}: {type(obj).__name__} is not callable as task(model, tokenizer)")
    return obj


def _import_ref(ref: str) -> tuple[Any, str]:
    """The object a ``module:name`` reference names, and the name; TaskError when it does not load."""
    if ":" not in ref:
        raise TaskError(f"task {ref!r}: not a built-in task ({', '.join(BUILTIN)}) nor 'module:callable'")
    module_name, attr = ref.split(":", 1)
    if not module_name or not attr.isidentifier():
        raise TaskError(f"task {ref!r}: expected 'package.module:name' with name a Python identifier")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import failure is the task's problem, reported by name
        raise TaskError(f"task {ref!r}: cannot import module {module_name!r}: {exc}") from exc
    try:
        return getattr(module, attr), attr
    except AttributeError:
        raise TaskError(f"task {ref!r}: module {module_name!r} has no attribute {attr!r}") from None


def task_name(ref: str) -> str:
    """The name a task's metrics are reported under (``task/<name>/acc``): a built-in's name, else
    the callable's name after the colon without a ``make_`` prefix.

    >>> task_name("cloze"), task_name("builtin:next_line"), task_name("mylab.evals:make_hellaswag")
    ('cloze', 'next_line', 'hellaswag')
    >>> task_name("command:arc={python} evals/arc.py --checkpoint {checkpoint} --out {out}")
    'arc'
    """
    if ref.startswith(COMMAND_PREFIX):
        return _split_command_ref(ref)[0]
    name = ref.removeprefix("builtin:")
    if ":" in name:
        name = name.split(":", 1)[1]
        name = name.removeprefix("make_") or name
    return name


def check_task(ref: str) -> str:
    """Check that a task reference loads, without building or calling anything: a built-in name,
    or a ``module:name`` whose module imports and whose attribute is callable (a ``make_`` factory
    is not called), or a ``command:`` task whose program exists. Returns :func:`task_name`; raises
    TaskError naming the problem."""
    if ref.startswith(COMMAND_PREFIX):
        from trainers.command import missing_program  # stdlib only

        name, argv = _split_command_ref(ref)
        why = missing_program(argv, os.getcwd())
        if why:
            raise TaskError(f"task {ref!r}: {why}")
        return name
    name = ref.removeprefix("builtin:")
    if name in BUILTIN:
        return name
    if ref.startswith("builtin:"):
        raise TaskError(f"unknown built-in task {name!r}; built-in tasks: {', '.join(BUILTIN)}")
    obj, attr = _import_ref(ref)
    if not callable(obj):
        what = "a factory" if attr.startswith("make_") else "callable as task(model, tokenizer)"
        raise TaskError(f"task {ref!r}: {type(obj).__name__} is not {what}")
    return task_name(ref)


def run_task(name: str, task: Callable, model, tokenizer: Any = None) -> dict[str, float]:
    """Evaluate ``task`` and check its metrics; TaskError names the task and what is wrong."""
    try:
        metrics = task(model, tokenizer)
    except TaskError:
        raise
    except Exception as exc:
        raise TaskError(f"task {name!r} failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(metrics, dict) or "acc" not in metrics:
        raise TaskError(f"task {name!r} returned {type(metrics).__name__}, expected a dict with 'acc'")
    out = {}
    for key, value in metrics.items():
        try:
            out[str(key)] = float(value)
        except (TypeError, ValueError):
            raise TaskError(f"task {name!r}: metric {key!r} is not a number ({value!r})") from None
    for key in ("acc", "acc_norm"):
        if key in out and not (0.0 <= out[key] <= 1.0):
            raise TaskError(f"task {name!r}: {key} = {out[key]:g} is outside [0, 1]")
    if "task_loss" in out and not (math.isfinite(out["task_loss"]) and out["task_loss"] >= 0):
        raise TaskError(f"task {name!r}: task_loss = {out['task_loss']:g} is not a finite non-negative number")
    return out


def eval_flops(n_params: float, metrics: dict[str, float]) -> float:
    """Forward-pass FLOPs of an evaluation: 2 N per token run through the model (0 when unknown)."""
    return 2.0 * float(n_params) * float(metrics.get("tokens", 0.0))


def load_tasks(refs: Sequence[str], *, stream: np.ndarray | None = None, seq_len: int | None = None,
               n_items: int = 200) -> list[tuple[str, Callable]]:
    """(name, task) for each reference (see :func:`load_task`, :func:`task_name`), in order."""
    return [(task_name(ref), load_task(ref, stream=stream, seq_len=seq_len, n_items=n_items)) for ref in refs]


def task_report(name: str, metrics: dict[str, float], chance: float | None = None) -> dict[str, float]:
    """A task's checked metrics (:func:`run_task`) as report keys ``task/<name>/{acc, acc_norm, loss,
    chance}``: what the built-in trainer reports and what a user's trainer should.

    >>> task_report("arc", {"acc": 0.5, "task_loss": 1.2, "n_items": 40.0}, chance=0.25)
    {'task/arc/acc': 0.5, 'task/arc/loss': 1.2, 'task/arc/chance': 0.25}
    """
    from trainers.contract import task_key

    chance = metrics.get("chance", chance)
    out = {}
    for metric, value in (("acc", metrics["acc"]), ("acc_norm", metrics.get("acc_norm")),
                          ("loss", metrics.get("task_loss")), ("chance", chance)):
        if value is not None:
            out[task_key(name, metric)] = float(value)
    return out


def evaluate_tasks(refs: Sequence[str], *, model=None, tokenizer: Any = None, checkpoint: str | None = None,
                   tokenizer_path: str | None = None, stream: np.ndarray | None = None, seq_len: int | None = None,
                   n_items: int = 200) -> dict[str, float]:
    """Every task of a trial (its config's ``tasks``) as report keys ``task/<name>/...`` (:func:`task_report`).

    For a user's trainer: ``model`` (``model(idx) -> logits``) runs the built-in and callable
    tasks; ``checkpoint`` (the trainer's own checkpoint directory, whatever its format: the
    lab's harness reads it) runs the command tasks, else they get ``model`` saved by
    :func:`save_task_checkpoint`. ``stream`` and ``seq_len``: the validation tokens built-in tasks
    are made of. Raises TaskError naming the task.
    """
    out: dict[str, float] = {}
    for name, task in load_tasks(refs, stream=stream, seq_len=seq_len, n_items=n_items):
        if isinstance(task, CommandTask) and checkpoint is not None:
            metrics = _checked(name, task.run(checkpoint, tokenizer_path))
        elif model is None:
            raise TaskError(f"task {name!r} needs the model (model(idx) -> logits)")
        else:
            metrics = run_task(name, task, model, tokenizer)
        out.update(task_report(name, metrics, getattr(task, "chance", None)))
    return out


def _split_command_ref(ref: str) -> tuple[str, list[str]]:
    """(name, argv) of ``command:NAME=PROGRAM ARGS...``."""
    body = ref[len(COMMAND_PREFIX):]
    name, sep, command = body.partition("=")
    name = name.strip()
    if not sep or not name or not all(c.isalnum() or c in "_-." for c in name):
        raise TaskError(f"task {ref!r}: expected 'command:NAME=PROGRAM ARGS...' with NAME of letters, digits, _ - .")
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise TaskError(f"task {ref!r}: cannot split the command: {exc}") from None
    if not argv:
        raise TaskError(f"task {ref!r}: empty command")
    return name, argv


def absolute_task_ref(ref: str, cwd: str) -> str:
    """A ``command:`` task with its program and script arguments (existing files relative to
    ``cwd``) made absolute, so the trial (another working directory) runs the same files; any
    other reference unchanged."""
    if not ref.startswith(COMMAND_PREFIX):
        return ref
    name, argv = _split_command_ref(ref)
    fixed = [str((Path(cwd) / a).resolve()) if "{" not in a and not os.path.isabs(a) and
             (Path(cwd) / a).is_file() and (i > 0 or os.sep in a) else a for i, a in enumerate(argv)]
    if fixed == argv:
        return ref
    # placeholders stay readable: quote only what a shell would split
    quoted = [a if a and all(c.isalnum() or c in "_-+=:,./@%{}" for c in a) else shlex.quote(a) for a in fixed]
    return f"{COMMAND_PREFIX}{name}={' '.join(quoted)}"


@dataclass
class CommandTask:
    """A task run as a program on a checkpoint (see the module docstring, "Command tasks")."""

    name: str
    argv: tuple[str, ...]
    seq_len: int | None = None
    timeout_s: float = 3600.0

    @classmethod
    def from_ref(cls, ref: str, seq_len: int | None = None) -> "CommandTask":
        name, argv = _split_command_ref(ref)
        return cls(name, tuple(argv), seq_len)

    def run(self, checkpoint: str, tokenizer: str | None = None) -> dict[str, Any]:
        """Run the program on a checkpoint directory; the metrics it wrote (checked by the caller)."""
        from trainers.command import substitute

        with tempfile.TemporaryDirectory(prefix=f"task-{self.name}-") as tmp:
            out = Path(tmp) / "metrics.json"
            values = {"checkpoint": str(checkpoint), "tokenizer": tokenizer or "", "out": str(out),
                      "python": sys.executable, "seq_len": str(self.seq_len or "")}
            argv = substitute(self.argv, values)
            env = {**os.environ, "SCALESWEEP_TASK_CHECKPOINT": values["checkpoint"],
                   "SCALESWEEP_TASK_TOKENIZER": values["tokenizer"], "SCALESWEEP_TASK_OUT": values["out"]}
            try:
                proc = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                                      timeout=self.timeout_s)
            except FileNotFoundError:
                raise TaskError(f"task {self.name!r}: program {argv[0]!r} not found") from None
            except subprocess.TimeoutExpired:
                raise TaskError(f"task {self.name!r}: the command ran past {self.timeout_s:g} s") from None
            tail = proc.stderr.decode(errors="replace")[-STDERR_TAIL:].strip()
            if proc.returncode != 0:
                raise TaskError(f"task {self.name!r}: the command ended with exit status {proc.returncode}"
                                + (f"; stderr tail:\n{tail}" if tail else ""))
            if not out.is_file():
                raise TaskError(f"task {self.name!r}: the command exited 0 but wrote no metrics to {{out}}")
            try:
                metrics = json.loads(out.read_text())
            except json.JSONDecodeError as exc:
                raise TaskError(f"task {self.name!r}: its metrics file is not JSON ({exc.msg})") from None
        return metrics

    def __call__(self, model, tokenizer: Any = None) -> dict[str, Any]:
        """The task on an in-memory model: saved with :func:`save_task_checkpoint` to a temporary directory."""
        with tempfile.TemporaryDirectory(prefix=f"task-{self.name}-ckpt-") as tmp:
            save_task_checkpoint(model, tmp)
            tok = None
            if tokenizer is not None and hasattr(tokenizer, "save"):  # a Hugging Face `tokenizers.Tokenizer`
                tok = str(Path(tmp) / "tokenizer.json")
                tokenizer.save(tok)
            elif isinstance(tokenizer, (str, os.PathLike)):
                tok = str(tokenizer)
            return self.run(tmp, tok)


def _checked(name: str, metrics: Any) -> dict[str, float]:
    """A command task's metrics through :func:`run_task`'s checks."""
    return run_task(name, lambda model, tokenizer: metrics, None)


def save_task_checkpoint(model, directory: str | os.PathLike) -> None:
    """Write a trainers model (or a DeepSpeed engine holding one) for a command task: ``model.pt``
    (state dict), ``model.json`` (shape, vocabulary, window) and, for the llama families, ``hf/`` (the
    Hugging Face ``save_pretrained`` directory any harness that reads Hugging Face models loads)."""
    import torch

    module = getattr(model, "module", model)  # a DeepSpeed engine wraps the model
    # a ZeRO-3 parameter holds an empty placeholder outside `deepspeed.zero.GatheredParameters`
    if any(hasattr(p, "ds_id") and p.numel() == 0 for p in module.parameters()):
        raise TaskError("a command task needs the whole model: ZeRO stage 3 partitions it (gather the "
                        "parameters with deepspeed.zero.GatheredParameters first, as the built-in trainer does)")
    shape = getattr(module, "shape", None)
    if shape is None:
        raise TaskError(f"cannot save a {type(module).__name__} for a command task: not a trainers model "
                        "(pass your own checkpoint to evaluate_tasks)")
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().float().cpu() for k, v in module.state_dict().items()}, folder / "model.pt")
    (folder / "model.json").write_text(json.dumps({"shape": shape.to_dict(), "vocab_size": int(module.vocab_size),
                                                   "max_seq_len": int(module.max_seq_len)}))
    hf = getattr(module, "hf", None)
    if hf is not None and hasattr(hf, "save_pretrained"):
        hf.save_pretrained(str(folder / "hf"))


def load_task_model(directory: str | os.PathLike):
    """The model :func:`save_task_checkpoint` wrote (in eval mode, on the CPU): ``model(idx) -> logits``."""
    import torch

    from trainers.model import GPT, Shape

    folder = Path(directory)
    meta = json.loads((folder / "model.json").read_text())
    shape = Shape(**meta["shape"])
    if shape.arch == "llama":
        from trainers.llama import Llama

        model = Llama(shape, vocab_size=meta["vocab_size"], max_seq_len=meta["max_seq_len"])
    else:
        model = GPT(shape, vocab_size=meta["vocab_size"], max_seq_len=meta["max_seq_len"])
    model.load_state_dict(torch.load(folder / "model.pt", map_location="cpu"))
    return model.eval()
