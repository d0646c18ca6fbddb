"""A dataset of facts spread over replicas: ``Client.locate_facts(frame)`` and its dataset-level figures.

    with Client(["10.0.0.1:50051", "10.0.0.2:50051"], model="demo") as c:
        results = c.locate_facts(frame, output="facts.jsonl", options={"skip_ablation": True})
    BatchReport(results).to_html("batch.html")

``locate`` (what ``Client.locate_facts`` calls for a pandas DataFrame) splits the rows into chunks,
one LocateFacts request each, and runs at most ``concurrency`` of them at a time, each on the
least-loaded replica that is not cooling off. A chunk whose replica fails with UNAVAILABLE (killed,
connection reset, draining), or with a CANCELLED this client did not cause (a replica that gRPC shuts
down while the chunk is under way), goes back to the queue with its unfinished rows only, for another
replica; the failed replica is avoided for a back-off (0.25 s, doubling, at most 5 s) and then tried
again. A chunk is tried at most ``client.retries`` × replicas times. Results are keyed by the frame's
index label: a row is recorded once, whichever replica answered it, so nothing is lost or counted
twice.

The ``output`` file is JSON lines: a header (the options), then one line per finished row, appended
and flushed as each arrives::

    {"factlens_results": 1, "options": {...}, "first_token": false}
    {"row": 0, "model": "demo", "prompt": "...", "target": " Paris", "server": "...", "report": {...}}
    {"row": 7, "model": "demo", "prompt": "...", "target": "Par", "server": "...",
     "error": {"code": "INVALID_ARGUMENT", "message": "items[3].target: ..."}}

A rerun with the same file computes only the rows it lacks; a last line cut short by a crash is
dropped (and overwritten). The file must be of the same options and its rows of the same facts
(prompt, target, model) as the frame's rows with those labels, else ValueError; rows of labels the
frame lacks (it is part of a larger one) stay in the file and out of the result.

``BatchReport(frame)`` turns the result into the paper's dataset-level figures: per-layer counts of
the top FFN and attention neurons, and the attention-vs-FFN share of the target's increase per
relation (an optional ``relation`` column), as tables, plots and an HTML page.
"""
import collections
import json
import math
import os
import threading
import time
import warnings

import grpc
import numpy as np
from google.protobuf import json_format

from factlens import results
from factlens.client import _error, _prompt, _target, retryable
from factlens.components import component_name
from factlens.errors import FactlensError, FactlensWarning, invalid_argument
from factlens.v1 import factlens_pb2 as pb

# The columns locate() adds to the input frame.
RESULT_COLUMNS = ["report", "error", "server", "target_id", "prob", "rank", "attention_increase", "ffn_increase",
                  "top_ffn_neuron", "top_attention_neuron"]
_FORMAT = 1  # the output file's format version (its header's "factlens_results")


def _plain(value, column):
    """A prompt / target / model value as JSON has it: str, int, or a list of ints (token ids)."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, str):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    try:
        return [int(i) for i in value]
    except (TypeError, ValueError):
        raise invalid_argument(f"{column}: {value!r} is neither text nor token ids") from None


def _label(label):
    if isinstance(label, (int, np.integer)) and not isinstance(label, bool):
        return int(label)
    if isinstance(label, str):
        return label
    raise ValueError(f"the frame's index labels must be integers or strings, not {label!r} "
                     "(reset_index() gives 0..n-1)")


class _Row:
    """One finished row: the fact as sent, which replica answered, and its report or (code name, message)."""

    __slots__ = ("fact", "server", "report", "error")

    def __init__(self, fact, server, report=None, error=None):
        self.fact, self.server, self.report, self.error = fact, server, report, error

    def to_json(self, label) -> str:
        line = {"row": label, **self.fact, "server": self.server}
        if self.report is not None:
            line["report"] = results.message_to_dict(self.report)
        else:
            line["error"] = {"code": self.error[0], "message": self.error[1]}
        return json.dumps(line, ensure_ascii=False)

    @classmethod
    def from_json(cls, line):
        fact = {k: line[k] for k in ("model", "prompt", "target")}
        if "report" in line:
            report = json_format.ParseDict(line["report"], pb.FactReport(), ignore_unknown_fields=True)
            return cls(fact, line["server"], report=report)
        return cls(fact, line["server"], error=(line["error"]["code"], line["error"]["message"]))


class _Results:
    """The finished rows, keyed by index label, and the output file they are appended to (if any).
    Thread-safe; ``add`` records a row once and ignores a second result for it."""

    def __init__(self, path, header, facts, bar):
        self.rows = {}
        self._lock = threading.Lock()
        self._bar = bar
        self._file = None
        if path is not None:
            self._file = self._open(os.fspath(path), header, facts)

    def _open(self, path, header, facts):
        lines, good = [], 0  # good: the byte length of the complete, parseable lines
        if os.path.exists(path):
            size = os.path.getsize(path)
            with open(path, "rb") as f:
                for raw in f:
                    try:
                        line = json.loads(raw)
                    except ValueError:
                        line = None
                    if not raw.endswith(b"\n") or not isinstance(line, dict):
                        if good + len(raw) < size:  # not the last line: the file is damaged, not cut short
                            raise ValueError(f"{path}: line {len(lines) + 1} is not a JSON object; not a factlens "
                                             "results file, or damaged")
                        break  # a crash's last line: dropped
                    lines.append(line)
                    good += len(raw)
        if lines and lines[0] != header:
            raise ValueError(f"{path} holds results of other options ({json.dumps(lines[0])}); these are "
                             f"{json.dumps(header)}: pass another output file")
        for number, line in enumerate(lines[1:], 2):
            key = json.dumps(line.get("row"))
            if key not in facts:
                continue  # a row of a larger frame: kept in the file, not in this result
            try:
                row = _Row.from_json(line)
            except (KeyError, TypeError, json_format.ParseError) as e:
                raise ValueError(f"{path}: line {number} is not a result row ({e!r})") from None
            label, expected = line["row"], facts[key]
            if expected != row.fact:
                raise ValueError(f"{path}: line {number} is row {label!r} of another fact ({row.fact}); this frame's "
                                 f"row {label!r} is {expected}: pass another output file")
            self.rows[key] = row
        f = open(path, "r+b" if os.path.exists(path) else "wb")
        f.truncate(good)
        f.seek(good)
        if not lines:
            f.write((json.dumps(header) + "\n").encode())
            f.flush()
        return f

    def add(self, key, label, row):
        with self._lock:
            if key in self.rows:
                return
            self.rows[key] = row
            if self._file is not None:
                self._file.write((row.to_json(label) + "\n").encode("utf-8"))
                self._file.flush()
            self._bar.update(1)

    def done(self, key) -> bool:
        with self._lock:
            return key in self.rows

    def close(self):
        if self._file is not None:
            self._file.close()


class _Chunk:
    """Rows of one model sent as one LocateFacts request: (key, label, fact) each; ``failed_on``: the
    replicas it failed on, ``attempts`` so far."""

    def __init__(self, model, rows, attempts=0, failed_on=()):
        self.model, self.rows, self.attempts, self.failed_on = model, rows, attempts, set(failed_on)


def _chunks(pending, chunk_size):
    """Chunks of at most chunk_size rows, each of one model, in the frame's order."""
    by_model = collections.defaultdict(list)
    for row in pending:
        by_model[row[2]["model"]].append(row)
    return [_Chunk(model, rows[i:i + chunk_size]) for model, rows in by_model.items()
            for i in range(0, len(rows), chunk_size)]


class _Spreader:
    """Runs chunks on a client's replicas from ``concurrency`` threads; see the module docstring.

    ``run()`` returns when every chunk is done, or raises the first failure that is not a replica's
    UNAVAILABLE (or that persists past the attempts), after cancelling the calls in flight."""

    def __init__(self, client, chunks, store, options, first_token, timeout, concurrency):
        self._client, self._store, self._timeout = client, store, timeout
        self._request = lambda chunk, rows: pb.LocateFactsRequest(
            model=chunk.model, options=options,
            items=[pb.FactItem(prompt=_prompt(f["prompt"]), target=_target(f["target"], first_token))
                   for _, _, f in rows])
        self._queue = collections.deque(chunks)
        self._threads = concurrency
        self._cond = threading.Condition()
        self._active = 0
        self._calls = set()
        self._failure = None
        n = len(client.replicas)
        self._load, self._strikes, self._cool_until = [0] * n, [0] * n, [0.0] * n
        self.max_attempts = client.retries * n

    def run(self):
        threads = [threading.Thread(target=self._work, daemon=True, name=f"factlens-chunk-{i}")
                   for i in range(self._threads)]
        for t in threads:
            t.start()
        try:
            for t in threads:
                t.join()
        except BaseException as e:  # KeyboardInterrupt: stop the others, then re-raise
            self._fail(e)
            for t in threads:
                t.join()
            raise
        if self._failure is not None:
            raise self._failure

    def _fail(self, error):
        with self._cond:
            if self._failure is None:
                self._failure = error
            for call in self._calls:
                call.cancel()
            self._cond.notify_all()

    def _pick(self, chunk):
        """(replica index, None) for the chunk, or (None, seconds to wait) while every replica cools off.
        Prefers the replicas it has not failed on, then the least loaded."""
        now = time.monotonic()
        ready = [i for i in range(len(self._load)) if self._cool_until[i] <= now]
        if not ready:
            return None, min(self._cool_until) - now
        return min(ready, key=lambda i: (i in chunk.failed_on, self._load[i])), None

    def _next(self):
        """(chunk, replica index) to run, or None when all is done or failed."""
        with self._cond:
            while self._failure is None and (self._queue or self._active):
                if not self._queue:
                    self._cond.wait()
                    continue
                replica, wait = self._pick(self._queue[0])
                if replica is None:
                    self._cond.wait(wait)
                    continue
                self._active += 1
                self._load[replica] += 1
                return self._queue.popleft(), replica
            return None

    def _work(self):
        try:
            while True:
                task = self._next()
                if task is None:
                    return
                chunk, replica = task
                error = self._run(chunk, self._client.replicas[replica])
                self._finish(chunk, replica, error)
        except BaseException as e:  # a bug or a bad output file: stop everything and report it
            self._fail(e)

    def _run(self, chunk, replica):
        """Streams the chunk's unfinished rows on one replica, recording each result; the grpc.RpcError
        it ended with, or None."""
        rows = [r for r in chunk.rows if not self._store.done(r[0])]
        if not rows:
            return None
        call = self._client.open_stream(replica, "LocateFacts", self._request(chunk, rows), self._timeout)
        with self._cond:
            self._calls.add(call)
            if self._failure is not None:
                call.cancel()
        try:
            for event in call:
                if event.HasField("item"):
                    key, label, fact = rows[event.item.index]
                    item = event.item
                    error = None
                    if item.HasField("error"):
                        code = next((c for c in grpc.StatusCode if c.value[0] == item.error.code),
                                    grpc.StatusCode.UNKNOWN)
                        error = (code.name, item.error.message)
                    self._store.add(key, label, _Row(fact, replica.address,
                                                     item.report if item.HasField("report") else None, error))
            return None
        except grpc.RpcError as e:
            return e
        finally:
            call.cancel()
            with self._cond:
                self._calls.discard(call)

    def _finish(self, chunk, replica, error):
        with self._cond:
            self._active -= 1
            self._load[replica] -= 1
            rest = [r for r in chunk.rows if not self._store.done(r[0])]
            if error is None:
                self._strikes[replica] = 0
                if rest:
                    self._failure = FactlensError(grpc.StatusCode.INTERNAL, f"{self._client.replicas[replica].address}"
                                                  f" ended a LocateFacts stream without {len(rest)} of its items")
            elif self._failure is None:  # else: cancelled by _fail
                attempts = chunk.attempts + 1
                if retryable(error) and attempts < self.max_attempts:
                    self._strikes[replica] += 1
                    self._cool_until[replica] = time.monotonic() + min(0.25 * 2 ** (self._strikes[replica] - 1), 5.0)
                    if rest:
                        self._queue.append(_Chunk(chunk.model, rest, attempts, chunk.failed_on | {replica}))
                else:
                    self._failure = _error(error, self._client.replicas[replica].address)
            if self._failure is not None:
                for call in self._calls:
                    call.cancel()
            self._cond.notify_all()


def _facts(client, frame):
    """{key: (label, fact)} of the frame's rows, fact = {"model", "prompt", "target"} as JSON has them."""
    missing = [c for c in ("prompt", "target") if c not in frame.columns]
    if missing:
        raise ValueError(f"the frame lacks the column(s) {', '.join(missing)} (needs prompt, target; model optional)")
    taken = [c for c in RESULT_COLUMNS if c in frame.columns]
    if taken:
        raise ValueError(f"the frame already has result column(s) {', '.join(taken)}: pass the input columns only")
    if not frame.index.is_unique:
        raise ValueError("the frame's index has duplicate labels: results are keyed by it (reset_index() fixes it)")
    models = frame["model"] if "model" in frame.columns else [None] * len(frame)
    facts = {}
    for label, prompt, target, model in zip(frame.index, frame["prompt"], frame["target"], models):
        label = _label(label)
        named = isinstance(model, str) and model
        facts[json.dumps(label)] = (label, {"model": model if named else client.model,
                                            "prompt": _plain(prompt, "prompt"), "target": _plain(target, "target")})
    return facts


def locate(client, frame, options, timeout=None, progress=None, first_token=False, output=None, chunk_size=16,
           concurrency=None):
    """``Client.locate_facts`` of a DataFrame (see there and the module docstring); ``options`` a
    ``pb.LocateOptions``. Returns a copy of the frame with RESULT_COLUMNS added."""
    from tqdm import tqdm

    if chunk_size < 1:
        raise ValueError(f"chunk_size: {chunk_size} (at least 1)")
    concurrency = concurrency or 2 * len(client.replicas)
    facts = _facts(client, frame)
    header = {"factlens_results": _FORMAT, "options": results.message_to_dict(options), "first_token": first_token}
    bar = tqdm(total=len(facts), desc="locate_facts", unit="fact", disable=None if progress is not False else True)
    store = _Results(output, header, {k: f for k, (_, f) in facts.items()}, bar)
    try:
        bar.update(sum(1 for k in facts if k in store.rows))
        pending = [(k, label, fact) for k, (label, fact) in facts.items() if k not in store.rows]
        _Spreader(client, _chunks(pending, chunk_size), store, options, first_token, timeout, concurrency).run()
    finally:
        store.close()
        bar.close()
    out = _frame(client, frame, [store.rows[k] for k in facts])
    for label, report in zip(out.index, out["report"]):
        for text in (report.proto.warnings if report is not None else ()):
            warnings.warn(f"rows[{label!r}]: {text}", FactlensWarning, stacklevel=3)
    return out


def _frame(client, frame, rows):
    """The input frame with RESULT_COLUMNS from the rows (in the frame's order)."""
    infos = {}

    def info(model):
        if model not in infos:
            infos.update({m.name: m for m in client.list_models()})
            if model not in infos:  # "" for the server's only model
                infos[model] = client.model_info() if model == client.model else None
        return infos[model]

    out = frame.copy()
    reports = [results.FactReport(r.report, info(r.fact["model"]), server=r.server) if r.report is not None else None
               for r in rows]
    out["report"] = reports
    out["error"] = [f"{r.error[0]}: {r.error[1]}" if r.error else None for r in rows]
    out["server"] = [r.server for r in rows]
    for column, value in _SUMMARY.items():
        out[column] = [value(r.proto) if r is not None else np.nan for r in reports]
    return out


def _top(neurons, kind):
    if not neurons:
        return None
    n = neurons[0]
    return component_name(pb.Component(kind=kind, layer=n.layer, neuron=n.neuron, head=n.head,
                                       source_position=n.source_position))


# The per-fact summary columns, from a report.
_SUMMARY = {
    "target_id": lambda r: r.target.id,
    "prob": lambda r: r.outcome.prob,
    "rank": lambda r: r.outcome.rank,
    "attention_increase": lambda r: float(sum(r.attention_layer_increase)),
    "ffn_increase": lambda r: float(sum(r.ffn_layer_increase)),
    "top_ffn_neuron": lambda r: _top(r.ffn_neurons, pb.Component.FFN_NEURON),
    "top_attention_neuron": lambda r: _top(r.attention_neurons, pb.Component.ATTENTION_NEURON),
}


def attention_share(report) -> float:
    """The attention layers' part of the positive increases a report's layers give the target:
    Σ max(attention_l, 0) / (Σ max(attention_l, 0) + Σ max(ffn_l, 0)); NaN when no layer raises it."""
    attention = np.clip(report.attention_layer_increase, 0, None).sum()
    ffn = np.clip(report.ffn_layer_increase, 0, None).sum()
    return float(attention / (attention + ffn)) if attention + ffn > 0 else math.nan


class BatchReport:
    """The dataset-level view of a ``locate_facts(frame)`` result (the paper's figures over many facts).

    ``frame``: the returned DataFrame (rows whose ``report`` is None, failed ones, are counted as
    failures and left out of the figures). A frame of several models gets one table section and
    one subplot per model. In Jupyter it displays itself (``_repr_html_``); ``to_html(path)``
    writes a self-contained page.
    """

    def __init__(self, frame, title=None):
        self.frame = frame
        self.title = title or f"{len(frame)} facts"
        ok = frame[frame["report"].notna()]
        self._reports = list(ok["report"])
        self._models = [r.model.name if r.model is not None else "" for r in self._reports]
        relation = ok["relation"] if "relation" in ok.columns else ["all"] * len(ok)
        self._relations = [str(r) for r in relation]

    def __repr__(self):
        return f"<BatchReport: {self.title}, {len(self._reports)} reports, {len(self.failures())} failed>"

    @property
    def models(self):
        """The models of the successful rows, in order of appearance."""
        return list(dict.fromkeys(self._models))

    def failures(self):
        """The rows that failed (their ``error``)."""
        return self.frame[self.frame["report"].isna()]

    def reports(self, model):
        """The successful rows' reports of one model."""
        return [r for r, m in zip(self._reports, self._models) if m == model]

    def mean_attention_share(self, model) -> float:
        """The mean of ``attention_share`` over the model's reports (those whose layers raise the target)."""
        shares = [s for s in map(attention_share, self.reports(model)) if not math.isnan(s)]
        return float(np.mean(shares)) if shares else math.nan

    def neurons_per_layer(self):
        """Per model and layer: how many of the facts' top FFN / attention neurons sit there (the
        LocateFacts aggregate's counts, over the whole dataset): model, layer, ffn_neurons,
        attention_neurons."""
        rows = []
        for model in self.models:
            reports = self.reports(model)
            layers = max(r.layers for r in reports)
            ffn, attention = np.zeros(layers, dtype=np.int64), np.zeros(layers, dtype=np.int64)
            for r in reports:
                for n in r.proto.ffn_neurons:
                    ffn[n.layer] += 1
                for n in r.proto.attention_neurons:
                    attention[n.layer] += 1
            rows += [[model, layer, ffn[layer], attention[layer]] for layer in range(layers)]
        return results._frame(rows, ["model", "layer", "ffn_neurons", "attention_neurons"])

    def relation_shares(self):
        """Per model and relation (the frame's ``relation`` column, else "all"): facts, the mean summed
        attention and FFN layer increases, and attention_share / ffn_share: the mean over the facts
        of ``attention_share(report)`` (facts whose layers raise the target nowhere left out) and 1
        minus it."""
        groups = collections.defaultdict(list)
        for report, model, relation in zip(self._reports, self._models, self._relations):
            groups[(model, relation)].append(report)
        rows = []
        for (model, relation), reports in groups.items():
            shares = [s for s in map(attention_share, reports) if not math.isnan(s)]
            share = float(np.mean(shares)) if shares else math.nan
            rows.append([model, relation, len(reports),
                         float(np.mean([r.attention_layer_increase.sum() for r in reports])),
                         float(np.mean([r.ffn_layer_increase.sum() for r in reports])), share, 1 - share])
        return results._frame(rows, ["model", "relation", "facts", "attention_increase", "ffn_increase",
                                     "attention_share", "ffn_share"])

    def _per_model(self, draw, size):
        from factlens import plots

        models = self.models or [""]
        fig = plots.NotebookFigure(figsize=(size[0], size[1] * len(models)), layout="constrained")
        for i, model in enumerate(models):
            draw(model, fig.add_subplot(len(models), 1, i + 1))
        return fig

    def plot_neurons_per_layer(self):
        """Bars per layer: the top FFN and attention neurons over the dataset (one subplot per model)."""
        from factlens import plots

        counts = self.neurons_per_layer()

        def draw(model, ax):
            c = counts[counts.model == model]
            plots.neurons_per_layer_bars(c.ffn_neurons, c.attention_neurons, ax=ax,
                                         title=f"Top neurons per layer over {len(self.reports(model))} facts" +
                                         (f" ({model})" if model else ""))
        return self._per_model(draw, (max(5.0, 0.45 * len(counts) + 2), 3.2))

    def plot_relation_shares(self):
        """Horizontal bars per relation: the attention vs FFN share of the target's increase (one subplot
        per model)."""
        from factlens import plots

        shares = self.relation_shares()

        def draw(model, ax):
            s = shares[shares.model == model]
            plots.share_bars(list(s.relation), s.attention_share, s.facts, ax=ax,
                             title="Attention vs FFN share of the target's increase" + (f" ({model})" if model else ""))
        return self._per_model(draw, (6.5, 0.35 * len(shares) + 1.6))

    def _repr_html_(self):
        from factlens.report_html import batch_summary

        return batch_summary(self, page=False)

    def to_html(self, path=None) -> str:
        """One self-contained HTML page (inline CSS, figures as base64 PNG); written to ``path`` if given."""
        from factlens.report_html import render_batch

        page = render_batch(self)
        if path is not None:
            with open(path, "w", encoding="utf-8") as f:
                f.write(page)
        return page
