// Prometheus metrics (prom-client): the lorax_* request metrics, batch / queue / KV gauges fed by engine steps,
// per-adapter counters, and vLLM-compatible names that LoRA-aware routers read. Only server/ writes them.
import client from "prom-client";

import type { AdapterRegistry } from "../../engine/src/adapters/registry.js";
import type { Engine, StepEvent } from "../../engine/src/engine.js";

const DURATION_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120];
const TOKEN_BUCKETS = [1, 4, 16, 64, 128, 256, 512, 1024, 2048, 4096, 8192];

export class Metrics {
  readonly registry = new client.Registry();
  readonly requestCount = new client.Counter({ name: "lorax_request_count", help: "Requests received", labelNames: ["route"], registers: [this.registry] });
  readonly requestSuccess = new client.Counter({ name: "lorax_request_success", help: "Requests completed", labelNames: ["route"], registers: [this.registry] });
  readonly requestFailure = new client.Counter({ name: "lorax_request_failure", help: "Requests failed, by error kind", labelNames: ["route", "err"], registers: [this.registry] });
  readonly requestDuration = new client.Histogram({ name: "lorax_request_duration", help: "End-to-end request seconds", buckets: DURATION_BUCKETS, registers: [this.registry] });
  readonly queueDuration = new client.Histogram({ name: "lorax_request_queue_duration", help: "Seconds from arrival to first scheduling", buckets: DURATION_BUCKETS, registers: [this.registry] });
  readonly validationDuration = new client.Histogram({ name: "lorax_request_validation_duration", help: "Seconds spent validating, tokenizing and acquiring the adapter", buckets: DURATION_BUCKETS, registers: [this.registry] });
  readonly inferenceDuration = new client.Histogram({ name: "lorax_request_inference_duration", help: "Seconds from first scheduling to the last token", buckets: DURATION_BUCKETS, registers: [this.registry] });
  readonly timePerToken = new client.Histogram({ name: "lorax_request_mean_time_per_token_duration", help: "Mean seconds per generated token of a request", buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1], registers: [this.registry] });
  readonly generatedTokens = new client.Histogram({ name: "lorax_request_generated_tokens", help: "Tokens generated per request", buckets: TOKEN_BUCKETS, registers: [this.registry] });
  readonly inputLength = new client.Histogram({ name: "lorax_request_input_length", help: "Prompt tokens per request", buckets: TOKEN_BUCKETS, registers: [this.registry] });
  readonly batchSize = new client.Gauge({ name: "lorax_batch_current_size", help: "Sequences in the last step", registers: [this.registry] });
  readonly batchTokens = new client.Histogram({ name: "lorax_batch_next_size", help: "Tokens per step", buckets: TOKEN_BUCKETS, registers: [this.registry] });
  readonly stepDuration = new client.Histogram({ name: "lorax_batch_inference_duration", help: "Seconds per engine step, by kind", labelNames: ["method"], buckets: DURATION_BUCKETS, registers: [this.registry] });
  readonly queueSize = new client.Gauge({ name: "lorax_queue_size", help: "Sequences waiting to be scheduled", registers: [this.registry], collect: () => this.live?.() });
  readonly kvUsed = new client.Gauge({ name: "loraserve_kv_blocks_used", help: "KV cache blocks in use", registers: [this.registry], collect: () => this.live?.() });
  readonly kvTotal = new client.Gauge({ name: "loraserve_kv_blocks_total", help: "KV cache blocks in the pool", registers: [this.registry], collect: () => this.live?.() });
  readonly preemptions = new client.Counter({ name: "loraserve_preemptions_total", help: "Sequences preempted (recomputed later) for lack of KV blocks", registers: [this.registry] });
  readonly adapterRequests = new client.Counter({ name: "lorax_adapter_requests", help: "Requests per adapter", labelNames: ["adapter"], registers: [this.registry] });
  // vLLM names read by LoRA-aware routers (Gateway API Inference Extension).
  readonly vllmRunning = new client.Gauge({ name: "vllm:num_requests_running", help: "Requests in the running batch", labelNames: ["model_name"], registers: [this.registry], collect: () => this.live?.() });
  readonly vllmWaiting = new client.Gauge({ name: "vllm:num_requests_waiting", help: "Requests waiting to be scheduled", labelNames: ["model_name"], registers: [this.registry], collect: () => this.live?.() });
  readonly vllmKvUsage = new client.Gauge({ name: "vllm:gpu_cache_usage_perc", help: "KV cache usage, 0..1 (name kept for router compatibility; the cache is in host memory on CPU)", labelNames: ["model_name"], registers: [this.registry], collect: () => this.live?.() });
  readonly vllmKvUsage2 = new client.Gauge({ name: "vllm:kv_cache_usage_perc", help: "KV cache usage, 0..1", labelNames: ["model_name"], registers: [this.registry], collect: () => this.live?.() });

  readonly adapterTransitions = new client.Counter({ name: "loraserve_adapter_transitions_total", help: "Adapter state changes, by target state", labelNames: ["to"], registers: [this.registry] });
  readonly adaptersActive = new client.Gauge({ name: "loraserve_adapters_active", help: "Adapters in the engine's LoRA pool", registers: [this.registry] });
  readonly adapterEvictions = new client.Gauge({ name: "loraserve_adapter_evictions", help: "Adapters evicted from the LoRA pool since start", registers: [this.registry] });
  /** vLLM's LoRA info metric: labels carry the running and waiting adapters; the value is a timestamp. */
  readonly loraInfo = new client.Gauge({ name: "vllm:lora_requests_info", help: "Running stats on LoRA requests", labelNames: ["running_lora_adapters", "waiting_lora_adapters", "max_lora"], registers: [this.registry], collect: () => this.live?.() });
  /** vLLM's KV cache info metric (value 1): the endpoint picker's prefix-cache scorer reads block_size and num_gpu_blocks. */
  readonly cacheInfo = new client.Gauge({ name: "vllm:cache_config_info", help: "KV cache configuration", labelNames: ["block_size", "num_gpu_blocks"], registers: [this.registry] });

  /** vLLM's prefix cache counters, in tokens: prompt tokens of admitted sequences, and those whose KV was found cached. */
  readonly prefixQueries = new client.Counter({ name: "vllm:prefix_cache_queries", help: "Prompt tokens looked up in the prefix cache", labelNames: ["model_name"], registers: [this.registry] });
  readonly prefixHits = new client.Counter({ name: "vllm:prefix_cache_hits", help: "Prompt tokens whose KV the prefix cache held", labelNames: ["model_name"], registers: [this.registry] });

  readonly specProposed = new client.Gauge({ name: "loraserve_speculative_tokens_proposed", help: "Draft tokens proposed since start (Medusa or prompt lookup)", registers: [this.registry] });
  readonly specAccepted = new client.Gauge({ name: "loraserve_speculative_tokens_accepted", help: "Draft tokens accepted since start", registers: [this.registry] });
  readonly specMeanAccepted = new client.Gauge({ name: "loraserve_speculative_mean_accepted_length", help: "Mean tokens emitted per verification step (accepted drafts + 1)", registers: [this.registry] });
  readonly specDraftSize = new client.Gauge({ name: "loraserve_speculative_draft_size", help: "Draft tokens the last step chose to propose per sequence (Medusa tree nodes, or prompt-lookup length; adapted to measured cost unless --fixed-speculation)", registers: [this.registry] });

  adapterTransition(_name: string, _from: string, to: string): void {
    this.adapterTransitions.inc({ to });
  }

  constructor(readonly modelName: string) {
    client.collectDefaultMetrics({ register: this.registry });
  }

  /**
   * Set by watch(): reads the scheduler and registry now. The queue, KV and routing gauges call it when scraped, so
   * an idle server reads 0 running / 0 waiting instead of the last step's values (routers and autoscalers act on them).
   */
  private live?: () => void;

  /** Subscribes to an engine's steps; the routing gauges read the engine live at scrape time. */
  watch(engine: Engine, registry: AdapterRegistry, maxLora: number): void {
    let lastLora = "";
    this.cacheInfo.set({ block_size: String(engine.scheduler.cfg.blockSize), num_gpu_blocks: String(engine.scheduler.blocks.numBlocks) }, 1);
    this.live = () => {
      const sch = engine.scheduler;
      const keys = sch.adapterKeys();
      const names = (ks: Set<string>) => [...ks].map((k) => registry.nameOf(k)).sort().join(",");
      const running = names(keys.running), waiting = names(keys.waiting);
      const labels = `${running}|${waiting}`;
      if (labels !== lastLora) {
        this.loraInfo.reset();
        lastLora = labels;
      }
      this.loraInfo.set({ running_lora_adapters: running, waiting_lora_adapters: waiting, max_lora: String(maxLora) }, Date.now() / 1000);
      const used = sch.blocks.usedCount, total = sch.blocks.numBlocks;
      this.queueSize.set(sch.waitingCount);
      this.kvUsed.set(used);
      this.kvTotal.set(total);
      this.vllmRunning.set({ model_name: this.modelName }, sch.runningCount);
      this.vllmWaiting.set({ model_name: this.modelName }, sch.waitingCount);
      const usage = total ? used / total : 0;
      this.vllmKvUsage.set({ model_name: this.modelName }, usage);
      this.vllmKvUsage2.set({ model_name: this.modelName }, usage);
    };
    engine.on("step", (e: StepEvent) => {
      this.adaptersActive.set(registry.activeCount);
      this.specProposed.set(engine.specProposed);
      this.specAccepted.set(engine.specAccepted);
      if (engine.specSteps > 0) this.specMeanAccepted.set(1 + engine.specAccepted / engine.specSteps);
      if (engine.draftSize !== undefined) this.specDraftSize.set(engine.draftSize);
      this.adapterEvictions.set(registry.evictions);
      const s = e.stats;
      this.batchSize.set(s.batchSize);
      this.batchTokens.observe(e.tokens);
      this.stepDuration.observe({ method: s.prefillTokens > 0 ? "prefill" : "decode" }, e.micros / 1e6);
      if (s.preemptions) this.preemptions.inc(s.preemptions);
      if (s.prefixQueried) this.prefixQueries.inc({ model_name: this.modelName }, s.prefixQueried);
      if (s.prefixHit) this.prefixHits.inc({ model_name: this.modelName }, s.prefixHit);
    });
  }
}
