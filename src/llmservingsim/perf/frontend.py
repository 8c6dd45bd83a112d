"""The serving frontend: latency a request sees outside the GPU (docs/engines.md).

A real engine puts work around the model's steps that the step timer does not see:

* **In** (``arrival_delay_s``): the API server parses the request and tokenizes the prompt (a
  cost per prompt token), then hands it to the engine core over IPC (a fixed cost). The
  request reaches the scheduler that much later than the client sent it.
* **Async scheduling** (``async_step_delay_s``): vLLM V1 schedules step k+1 while step k runs,
  so a request that reaches the engine while a step is running is first scheduled in the step
  after next: one step later than a synchronous scheduler would take it. It is modelled as a
  delay of one step (the request's own mean decode step) on its first token and every later
  one; the batches themselves are not re-timed (an approximation, docs/engines.md).
* **Out** (``token_out_delay_s``): each token goes back from the engine core to the API
  server, is detokenized and streamed to the client.
* **Per step** (``step_overhead_s``): CPU time of one engine step that is not overlapped with
  the GPU (scheduling, input preparation, output processing); it replaces the device's
  engineering constants (``efficiency.iteration_overhead_us`` / ``per_seq_overhead_us``).
* **Async output processing** (``output_delay_s``): vLLM 0.6 (V0) processes the outputs of
  step k (detokenize, stop checks, the request's output and its first-token / finish times)
  during step k+1, after that step's host work (scheduling, input preparation): every token
  of a request, its first and its last, is emitted one step's host time later (the fixed
  host time the step timer adds: ``step_s``, or the device's ``iteration_overhead_us`` where
  the frontend sets none). (vLLM runs
  that step for the request too, as it is known finished only once its last token is
  processed; that one more sequence in one batch is not simulated.)

Latencies the client measures are then: TTFT = first token (engine) + the out delay + the
async step + the output delay − client arrival, where the engine saw the request at client
arrival + the in delay. The vLLM V1 parameters are fitted on measured per-request data
(scripts/fit_frontend.py, docs/calibration.md §9), vLLM 0.6's taken from the vLLM team's
published profile of V0 and its code (§9b); all ship in the engine presets
(data/engines/*.yaml).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Frontend:
    """One engine's frontend parameters (seconds)."""

    request_s: float = 0.0
    """Fixed cost per request before the engine core has it: API server + IPC hand-off."""
    per_prompt_token_s: float = 0.0
    """Tokenization / input processing per prompt token."""
    token_out_s: float = 0.0
    """Engine core → client per emitted token: IPC, detokenize, stream."""
    async_scheduling: bool = False
    """A request that arrives while a step runs is first scheduled one step later."""
    step_s: float | None = None
    """CPU time per engine step not overlapped with the GPU (None: the device's constant)."""
    per_seq_s: float | None = None
    """Same, per sequence in the step (None: the device's constant)."""
    async_output: bool = False
    """vLLM 0.6 async output processing: a step's outputs are processed during the next
    step, after its host work (the per-step part of :meth:`host_overhead_s`)."""

    def arrival_delay_s(self, prompt_tokens: int) -> float:
        """How much later than the client sent it the request reaches the scheduler."""
        return self.request_s + self.per_prompt_token_s * prompt_tokens

    def async_step_delay_s(self, waited_for_step: bool, step_s: float) -> float:
        """Extra delay of every token of a request under async scheduling: one step
        (``step_s``) when the request arrived while a step ran (``waited_for_step``)."""
        return step_s if self.async_scheduling and waited_for_step else 0.0

    def token_out_delay_s(self) -> float:
        """Delay between the engine emitting a token and the client receiving it."""
        return self.token_out_s

    def output_delay_s(self, host_step_s: float) -> float:
        """Delay of every token under async output processing: the next step's host work,
        its fixed part ``host_step_s``, the one the step timer adds to every step (this
        frontend's ``step_s`` or, where it sets none, the device's constant:
        :meth:`host_overhead_s`)."""
        return host_step_s if self.async_output else 0.0

    def step_overhead_s(self, num_seqs: int, device_step_s: float, device_seq_s: float) -> float:
        """CPU time of one step with ``num_seqs`` sequences; the device's constants stand in
        for the ones this frontend does not set (IterationTimer adds it to every step)."""
        step, per_seq = self.host_overhead_s(device_step_s, device_seq_s)
        return step + per_seq * num_seqs

    def host_overhead_s(self, device_step_s: float, device_seq_s: float) -> tuple[float, float]:
        """(per step, per sequence) CPU seconds of a step: this frontend's, or the device's."""
        step = device_step_s if self.step_s is None else self.step_s
        per_seq = device_seq_s if self.per_seq_s is None else self.per_seq_s
        return step, per_seq


@dataclass(slots=True)
class ClientClock:
    """Turns the engine's times of a request into the times its client sees.

    The engine is fed each request at ``client arrival + arrival_delay_s``; the client arrival
    is kept here by request id (exact, not recomputed by subtraction)."""

    frontend: Frontend
    client_arrival: dict[int, float]
    host_step_s: tuple[float, ...]
    """Per instance (by index): the host seconds per step its timer adds (the fixed part of
    :meth:`Frontend.host_overhead_s`), which async output processing delays tokens by."""

    def times(
        self,
        request_id: int,
        instance: int,
        engine_arrival: float,
        first_scheduled: float,
        first_token: float,
        finish: float,
        generated: int,
        finished: bool,
    ) -> tuple[float, float, float]:
        """(arrival, first token, finish) as the client sees them, for a request that ended
        on ``instance`` (with disaggregated prefill its decode instance, whose step delays
        the first token too). Requests that ended unserved keep their engine finish time
        (nothing was streamed)."""
        arrival = self.client_arrival.get(request_id, engine_arrival)
        if not finished or first_token < 0:
            return arrival, first_token, finish
        fe = self.frontend
        step = (finish - first_token) / (generated - 1) if generated > 1 else 0.0
        shift = fe.async_step_delay_s(first_scheduled > engine_arrival, step)
        shift += fe.output_delay_s(self.host_step_s[instance]) + fe.token_out_delay_s()
        return arrival, first_token + shift, finish + shift
