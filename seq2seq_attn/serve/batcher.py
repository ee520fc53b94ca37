"""Dynamic batching: one worker thread owns the model and translates the sentences of
concurrent requests together.

A request becomes a :class:`Job` on a queue. With ``streaming``, where the backend can (the
torch backend, for jobs without prefixes, constraints or sampling:
:meth:`JobOptions.streamable`), the worker keeps a running search per decode setting
(:meth:`~seq2seq_attn.translation.Translator.stream`): between two of its steps, the sentences
of newly queued jobs join it, and each job is answered as soon as its last sentence is
finished, so a request neither waits for a batch to drain nor leaves the search running with
few sentences (iteration-level scheduling). Other jobs, and every job without ``streaming``
(the default: it served closed-loop clients better), are gathered: an idle worker takes the
queued jobs and what else arrives until ``wait_seconds`` pass without a new one
(:meth:`DynamicBatcher._gather_deadline`), groups the jobs that may share a search
(:meth:`~seq2seq_attn.serve.schema.JobOptions.batch_key`) and runs each group through the
translator in one call, which cuts it into the same length-sorted, token-bounded batches as
``attn-translate``. Each job's future gets one JSON-ready result per sentence. The event loop
only waits on futures: it never runs the model.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

from ..decoding import Hypothesis
from ..translation import TranslationStream, Translator
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
    """What the worker has done: whole-batch searches run (one per group of jobs), jobs and
    sentences translated, the most sentences one search held, the steps of running searches
    with the sentences they held in all (their ratio: the batch that streaming keeps) and at
    most, and the seconds it spent on jobs rather than waiting for them (over a stretch of
    wall time: the share of it the model was kept busy)."""

    searches: int = 0
    jobs: int = 0
    sentences: int = 0
    largest_search: int = 0
    steps: int = 0
    step_sentences: int = 0
    largest_step: int = 0
    busy_seconds: float = 0.0


@dataclass
class _Running:
    """A running search (:class:`~seq2seq_attn.translation.common.TranslationStream`) and,
    for each of its sentences, its job and place there."""

    stream: TranslationStream
    translator: Translator  # with the jobs' decode settings, for their results
    places: dict[int, tuple[Job, int]] = field(default_factory=dict)  # key -> (job, index)
    found: dict[int, list] = field(default_factory=dict)  # id(job) -> hypotheses by index


GATHER_WAITS = 10  # an idle worker gathers jobs for at most this many wait_seconds
_STOP = object()  # put on the queue by close(): the worker ends after the jobs before it


class DynamicBatcher:
    """The worker thread and its queue. ``wait_seconds``: when the worker is idle, how long
    after the last arrival it goes on gathering jobs for a search (see
    :meth:`_gather_deadline`); ``max_gather_sentences``: most sentences in searches at once
    (the rest wait); ``streaming``: let jobs join running searches where they can (else every
    job waits for a whole-batch search). Open ``translator`` in a thread that has ended (as
    attn-serve does): a thread that ran torch keeps an OpenMP team, and a second team beside
    the worker's makes libgomp throttle the worker's searches."""

    def __init__(
        self,
        translator: Translator,
        wait_seconds: float = 0.01,
        max_gather_sentences: int = 256,
        streaming: bool = False,
    ) -> None:
        self.translator = translator
        self.wait_seconds = wait_seconds
        self.max_gather_sentences = max_gather_sentences
        self.streaming = streaming
        self.stats = BatcherStats()
        self._queue: queue.Queue = queue.Queue()
        self._waiting: collections.deque[Job] = collections.deque()  # taken, not yet started
        self._running: dict[tuple, _Running] = {}  # by batch key
        self._queued_sentences = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._work, name="attn-serve-model", daemon=True)
        self._busy_from = 0.0  # when the worker last turned from waiting (or counting) to work

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
        if not sentences:  # nothing to translate
            job.future.set_result([])
            return job.future
        with self._lock:
            self._queued_sentences += len(sentences)
        self._queue.put(job)
        return job.future

    def _work(self) -> None:
        """The worker: take jobs, start them (joining running searches, or whole-batch
        searches), step the running searches and answer; until :meth:`close` and every job
        taken before it is answered."""
        stopping = False
        while not (stopping and not self._waiting and not self._running):
            if not stopping:
                stopping = self._take(block=not self._running and not self._waiting)
            self._busy_from = time.perf_counter()
            live, cancelled = [], []
            for job in self._admit():  # (a job back from a full search is running already)
                started = job.future.running() or job.future.set_running_or_notify_cancel()
                (live if started else cancelled).append(job)
            self._answered(cancelled)
            whole, no_room = self._join_all(live)
            self._waiting.extendleft(reversed(no_room))  # first in line at the next step
            for group in _groups(whole):
                self._run(group)
            self._step_all()
            self._count_busy()

    def _take(self, block: bool) -> bool:
        """Move the queued jobs to the waiting ones; when ``block`` (nothing to do), wait for
        a job and gather what else comes (see :meth:`_gather_deadline`). Whether
        :meth:`close` was asked."""
        deadline, turned = math.inf, time.monotonic()
        while True:
            try:
                if block and not self._waiting:
                    job = self._queue.get()
                elif block:
                    job = self._queue.get(timeout=max(deadline - time.monotonic(), 0.0))
                else:
                    job = self._queue.get_nowait()
            except queue.Empty:
                return False
            if job is _STOP:
                return True
            self._waiting.append(job)
            if block:
                deadline = self._gather_deadline(max(self._waiting[0].arrived, turned))

    def _gather_deadline(self, opened: float) -> float:
        """When an idle worker stops gathering jobs for a search: ``wait_seconds`` after the
        last arrival, at most ``GATHER_WAITS`` times that after the gathering ``opened`` (when
        the first job arrived, or when the worker turned to the queue if the job was there
        already). The window opens late for jobs that queued during a search: the clients just
        answered by that search send their next requests now, and they join the same batch
        instead of waiting a whole search for the next one (with the window opened at the
        first arrival, closed-loop clients split into two halves that took turns)."""
        now = time.monotonic()
        return min(opened + GATHER_WAITS * self.wait_seconds, max(now, opened) + self.wait_seconds)

    def _admit(self) -> list[Job]:
        """The waiting jobs that fit beside the sentences already in searches (at most
        ``max_gather_sentences``; always at least one job when none are)."""
        in_searches = sum(len(running.places) for running in self._running.values())
        room = self.max_gather_sentences - in_searches
        admitted: list[Job] = []
        while self._waiting:
            size = len(self._waiting[0].sentences)
            if size > room and (admitted or in_searches):
                break
            admitted.append(self._waiting.popleft())
            room -= size
        return admitted

    def _join_all(self, jobs: list[Job]) -> tuple[list[Job], list[Job]]:
        """Let the streamable ``jobs`` join the running search of their batch key (started
        here if none), each key's jobs in one encoder batch. Returns the jobs that need a
        whole-batch search, and those the search has no room for yet."""
        whole, no_room, by_key = [], [], {}
        for job in jobs:
            if self.streaming and job.options.streamable():
                by_key.setdefault(job.options.batch_key(), []).append(job)
            else:
                whole.append(job)
        for key, group in by_key.items():
            running = self._running.get(key) or self._start_search(key, group[0].options)
            joined = False if running is None else self._add(running, group)
            if joined is None:  # not all at once: one job at a time, until one does not fit
                for index, job in enumerate(group):  # (an idle search takes one, whatever size)
                    alone = self._add(running, [job], force=not running.places)
                    if alone is None:
                        no_room += group[index:]
                        break
                    whole += [] if alone else [job]
            elif not joined:
                whole += group
            if running is not None and not running.places:
                self._end(key)
        return whole, no_room

    def _end(self, key: tuple) -> None:
        """Close the running search of ``key`` and forget it."""
        self._running.pop(key).stream.close()

    def _start_search(self, key: tuple, options: JobOptions) -> _Running | None:
        """A running search for jobs of ``options`` (kept under ``key``), or None where the
        backend has none."""
        try:
            stream = self.translator.stream(options.decode)
        except Exception:
            logger.warning("no running search for %s", options.decode, exc_info=True)
            return None
        if stream is None:
            return None
        translator = dataclasses.replace(self.translator, decode=options.decode)
        running = self._running[key] = _Running(stream, translator)
        return running

    def _add(self, running: _Running, jobs: list[Job], force: bool = False) -> bool | None:
        """Add the sentences of ``jobs`` to ``running`` (``force``: even over its bound): True
        when they joined, None when it has no room for them now, False when they failed to (a
        whole-batch search of each job alone then reports its error)."""
        sentences = [sentence for job in jobs for sentence in job.sentences]
        try:
            keys = running.stream.add(sentences, force)
        except Exception:
            logger.warning("%d sentences could not join a search", len(sentences), exc_info=True)
            return False
        if keys is None:
            return None
        places = [(job, index) for job in jobs for index in range(len(job.sentences))]
        running.places.update(zip(keys, places, strict=True))
        for job in jobs:
            running.found[id(job)] = [None] * len(job.sentences)
        return True

    def _step_all(self) -> None:
        """One step of every running search; answer each job whose sentences are all done.
        A search that fails ends, and its jobs are searched again one at a time as whole
        batches, so that only a job at fault gets the error; the other searches go on."""
        for key, running in list(self._running.items()):
            try:
                finished = running.stream.step()
            except Exception:
                logger.warning(
                    "a running search of %d sentences failed", len(running.places), exc_info=True
                )
                self._end(key)
                for job in {id(job): job for job, _ in running.places.values()}.values():
                    self._run([job])
                continue
            self._count_step(len(running.places))
            for sentence_key, hypotheses in finished:
                self._finished(running, running.places.pop(sentence_key), hypotheses)
            if not running.places:
                self._end(key)

    def _count_busy(self) -> None:
        """Add the time since the worker turned to work (or last counted it) to its busy
        seconds; called when a search or a step ends, before its answers, so a client that asks
        at once sees that search's time (a streaming job's results are counted after)."""
        now = time.perf_counter()
        self.stats.busy_seconds += now - self._busy_from
        self._busy_from = now

    def _count_step(self, sentences: int) -> None:
        """Add one step of a running search holding ``sentences`` to the statistics."""
        self._count_busy()
        stats = self.stats
        stats.steps += 1
        stats.step_sentences += sentences
        stats.largest_step = max(stats.largest_step, sentences)

    def _finished(self, running: _Running, place: tuple[Job, int], hypotheses: list) -> None:
        """Record one sentence's ``hypotheses``; answer its job once it has them all."""
        job, index = place
        found = running.found[id(job)]
        found[index] = hypotheses
        if any(entry is None for entry in found):
            return
        del running.found[id(job)]
        self.stats.jobs += 1  # the statistics before the answer: a client may ask at once
        self.stats.sentences += len(job.sentences)
        self._answered([job])
        try:
            results = _results(running.translator, job, found)
        except Exception as error:  # e.g. the alignments failed: this job only
            logger.exception("the results of %d sentences failed", len(job.sentences))
            job.future.set_exception(error)
            return
        job.future.set_result(results)

    def _answered(self, jobs: list[Job]) -> None:
        """``jobs`` leave the count of sentences queued."""
        with self._lock:
            self._queued_sentences -= sum(len(job.sentences) for job in jobs)

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
            results, start = [], 0
            for job in group:
                end = start + len(job.sentences)
                results.append(_results(translator, job, found[start:end]))
                start = end
        except Exception as error:  # the model's error goes to the requests, not the worker
            if len(group) > 1:  # one job's input may be at fault: the others must not pay
                for job in group:
                    self._run([job])
                return
            logger.exception("translating %d sentences failed", len(sentences))
            self._count(group, len(sentences))
            self._answered(group)
            group[0].future.set_exception(error)
            return
        self._count(group, len(sentences))  # before the answers: a client may ask at once
        self._answered(group)
        for job, result in zip(group, results, strict=True):
            job.future.set_result(result)

    def _count(self, group: list[Job], sentences: int) -> None:
        """Add one search of ``sentences`` sentences for ``group`` to the statistics."""
        self._count_busy()
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
