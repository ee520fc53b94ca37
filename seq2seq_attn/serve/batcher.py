"""Dynamic batching: one worker thread owns the model and translates the sentences of
concurrent requests together.

A request becomes a :class:`Job` on a queue. The worker takes the oldest job, gathers what
else arrives within ``wait_seconds`` of it (under load the wait is already over and it takes
what queued up during the previous search), groups the jobs that may share a search
(:meth:`~seq2seq_attn.serve.schema.JobOptions.batch_key`) and runs each group through the
translator in one call, which cuts it into the same length-sorted, token-bounded batches as
``attn-translate``. Each job's future then gets one JSON-ready result per sentence. The
event loop only waits on futures: it never runs the model.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

from ..decoding import Hypothesis
from ..translation import Translator
from .schema import JobOptions

logger = logging.getLogger(__name__)


@dataclass
class Job:
    """The sentences of one request, how to translate them, and the future that gets one
    result dict per sentence (or the exception the model raised)."""

    sentences: list[str]
    options: JobOptions
    future: Future = field(default_factory=Future)
    arrived: float = field(default_factory=time.monotonic)


@dataclass
class BatcherStats:
    """What the worker has done: searches run (one per group of jobs), jobs and sentences
    translated, and the most sentences one search held."""

    searches: int = 0
    jobs: int = 0
    sentences: int = 0
    largest_search: int = 0


_STOP = object()  # put on the queue by close(): the worker ends after the jobs before it


class DynamicBatcher:
    """The worker thread and its queue. ``wait_seconds``: how long the oldest waiting job
    waits for company; ``max_gather_sentences``: most sentences gathered before a search
    starts (the rest wait for the next)."""

    def __init__(
        self, translator: Translator, wait_seconds: float = 0.005, max_gather_sentences: int = 256
    ) -> None:
        self.translator = translator
        self.wait_seconds = wait_seconds
        self.max_gather_sentences = max_gather_sentences
        self.stats = BatcherStats()
        self._queue: queue.Queue = queue.Queue()
        self._queued_sentences = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._work, name="attn-serve-model", daemon=True)

    def start(self) -> None:
        """Start the worker thread."""
        self._thread.start()

    def close(self) -> None:
        """Translate every job already submitted, then end the worker thread."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()

    @property
    def running(self) -> bool:
        """Whether the worker thread is translating (or waiting for work)."""
        return self._thread.is_alive()

    @property
    def queued_sentences(self) -> int:
        """Sentences submitted and not yet answered."""
        return self._queued_sentences

    def submit(self, sentences: list[str], options: JobOptions) -> Future:
        """Queue a request's sentences; the future gets their results in input order. A job
        whose future is cancelled before its search starts (its client left) is skipped."""
        if not self.running:
            raise RuntimeError("the model worker is not running")
        job = Job(sentences, options)
        with self._lock:
            self._queued_sentences += len(sentences)
        self._queue.put(job)
        return job.future

    def _work(self) -> None:
        """The worker: gather, group, translate, answer; until :meth:`close`."""
        while True:
            jobs, stop = self._gather()
            live = [job for job in jobs if job.future.set_running_or_notify_cancel()]
            for group in _groups(live):
                self._run(group)
            with self._lock:
                self._queued_sentences -= sum(len(job.sentences) for job in jobs)
            if stop:
                return

    def _gather(self) -> tuple[list[Job], bool]:
        """The oldest job and those that arrive within ``wait_seconds`` of it (at most
        ``max_gather_sentences`` sentences), and whether :meth:`close` was asked."""
        first = self._queue.get()
        if first is _STOP:
            return [], True
        jobs, count = [first], len(first.sentences)
        deadline = first.arrived + self.wait_seconds
        while count < self.max_gather_sentences:
            try:
                job = self._queue.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                break
            if job is _STOP:
                return jobs, True
            jobs.append(job)
            count += len(job.sentences)
        return jobs, False

    def _run(self, group: list[Job]) -> None:
        """One search over every sentence of ``group`` (jobs with one batch key), then each
        job's results; an error fails the group's futures, never the worker."""
        options = group[0].options
        sentences = [sentence for job in group for sentence in job.sentences]
        translator = dataclasses.replace(  # the same model with this group's decode settings
            self.translator, decode=options.decode, sampling=options.sampling
        )
        try:
            found = translator.n_best(
                sentences, _joined(group, "prefixes", ""), _joined(group, "constraints", [])
            )
            start = 0
            for job in group:
                end = start + len(job.sentences)
                job.future.set_result(_results(translator, job, found[start:end]))
                start = end
        except Exception as error:  # the model's error goes to the requests, not the worker
            if len(group) > 1:  # one job's input may be at fault: the others must not pay
                for job in group:
                    if not job.future.done():
                        self._run([job])
                return
            logger.exception("translating %d sentences failed", len(sentences))
            group[0].future.set_exception(error)
        self._count(group, len(sentences))

    def _count(self, group: list[Job], sentences: int) -> None:
        """Add one search of ``sentences`` sentences for ``group`` to the statistics."""
        stats = self.stats
        stats.searches += 1
        stats.jobs += len(group)
        stats.sentences += sentences
        stats.largest_search = max(stats.largest_search, sentences)


def _groups(jobs: list[Job]) -> list[list[Job]]:
    """``jobs`` grouped by batch key, in order of first arrival; sampling jobs alone."""
    groups: dict[object, list[Job]] = {}
    for number, job in enumerate(jobs):
        key = job.options.batch_key()
        groups.setdefault(number if job.options.sampling else key, []).append(job)
    return list(groups.values())


def _joined(group: list[Job], name: str, empty: object) -> list | None:
    """Every job's per-sentence ``name`` guides (``prefixes``, ``constraints``) in one list,
    None when no job has them (a group shares one kind, see ``batch_key``)."""
    if all(getattr(job.options, name) is None for job in group):
        return None
    joined: list = []
    for job in group:
        guides = getattr(job.options, name)
        joined += [empty] * len(job.sentences) if guides is None else guides
    return joined


def _results(translator: Translator, job: Job, found: list[list[Hypothesis]]) -> list[dict]:
    """One JSON-ready result per sentence of ``job``: the best translation and the n-best
    list with scores, and what the job asked for beside them."""
    options = job.options
    best = [hypotheses[0] for hypotheses in found]
    alignments = translator.alignments(job.sentences, best) if options.alignments else None
    results = []
    for index, (sentence, hypotheses) in enumerate(zip(job.sentences, found, strict=True)):
        texts = translator.detokenize(hypotheses)
        n_best = [
            {
                "translation": text,
                "score": _finite(hypothesis.score),
                "log_prob": _finite(hypothesis.log_prob),
            }
            for text, hypothesis in zip(texts, hypotheses, strict=True)
        ]
        result = {**n_best[0], "n_best": n_best}
        if options.constraints is not None:
            result["unmet_constraints"] = hypotheses[0].unmet_constraints
        if alignments is not None:
            result["alignment"] = alignments[index]
        if options.attention:
            wanted = sentence.strip() != ""
            result["attention"] = (
                translator.attention_views(sentence, hypotheses[0]) if wanted else None
            )
        results.append(result)
    return results


def _finite(value: float) -> float | None:
    """``value``, or None (JSON null) for an infinite or NaN score, which JSON cannot carry."""
    return value if math.isfinite(value) else None
