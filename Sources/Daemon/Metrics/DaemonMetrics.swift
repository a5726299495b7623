// DaemonMetrics: every Prometheus series lorad exports, on one registry owned by the daemon (not the global
// swift-metrics bootstrap, so several daemons/engines in one test process never share counters).
// Text exposition format 0.0.4 via swift-prometheus' `emit(into:)`.

import Foundation
import Prometheus

/// Prometheus metrics of one lorad instance; all methods are thread-safe.
public final class DaemonMetrics: @unchecked Sendable {
    /// The registry rendered at `GET /metrics`.
    public let registry = PrometheusCollectorRegistry()

    private let promptTokens: Counter
    private let generatedTokens: Counter
    private let timeToFirstToken: ValueHistogram
    private let interTokenLatency: ValueHistogram
    private let stepSequences: ValueHistogram
    private let stepTokens: ValueHistogram
    private let queueDepth: Gauge
    private let runningSequences: Gauge
    private let kvBytesUsed: Gauge
    private let kvBytesLimit: Gauge
    private let adapterRegistrations: Counter
    private let adaptersRegistered: Gauge
    private let adaptersCached: Gauge
    private let adapterCacheBytes: Gauge
    private let adapterCacheLimit: Gauge
    private let adapterLiveBytes: Gauge
    private let adapterLoads: Counter
    private let adapterEvictions: Counter
    /// The registry's load and eviction counts already added to the counters (guarded by `sourceLock`).
    private var countedLoads = 0
    private var countedEvictions = 0
    private let sourceLock = NSLock()
    private var adapterSource: (@Sendable () -> AdapterStats)?
    private var storeSource: (@Sendable () -> StoreStats)?
    private let storedCompletions: Gauge
    private let feedbackItems: Gauge
    private let storePruned: Gauge
    private let storeDiskFull: Gauge

    /// Where `/metrics` reads the store's counts from.
    public func setStoreSource(_ source: @escaping @Sendable () -> StoreStats) {
        sourceLock.withLock { storeSource = source }
    }

    /// Where `render()` reads the adapter gauges from (the registry, once it exists).
    public func setAdapterSource(_ source: @escaping @Sendable () -> AdapterStats) {
        sourceLock.withLock { adapterSource = source }
    }

    public init() {
        func d(_ name: String, _ unit: String, _ help: String) -> MetricNameDescriptor {
            MetricNameDescriptor(namespace: "lorad", metricName: name, unitName: unit, helpText: help)
        }
        promptTokens = registry.makeCounter(
            descriptor: d("prompt_tokens", "total", "Prompt tokens prefilled."))
        generatedTokens = registry.makeCounter(
            descriptor: d("generation_tokens", "total", "Tokens sampled."))
        timeToFirstToken = registry.makeValueHistogram(
            descriptor: d("time_to_first_token", "seconds", "From request admission to the first sampled token."),
            buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60])
        interTokenLatency = registry.makeValueHistogram(
            descriptor: d("inter_token_latency", "seconds", "Time between consecutive tokens of one sequence."),
            buckets: [0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2.5])
        stepSequences = registry.makeValueHistogram(
            descriptor: d("step_batch_sequences", "", "Sequences in one batched forward step."),
            buckets: [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64])
        stepTokens = registry.makeValueHistogram(
            descriptor: d("step_batch_tokens", "", "Rows (tokens) in one batched forward step."),
            buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048])
        queueDepth = registry.makeGauge(
            descriptor: d("queue_depth", "", "Requests waiting for admission."))
        runningSequences = registry.makeGauge(
            descriptor: d("running_sequences", "", "Sequences in prefill or decode."))
        kvBytesUsed = registry.makeGauge(
            descriptor: d("kv_cache_used", "bytes", "kv_cache bytes reserved by running sequences."))
        kvBytesLimit = registry.makeGauge(
            descriptor: d("kv_cache_limit", "bytes", "kv_cache budget (--kv-cache-mb)."))
        adapterRegistrations = registry.makeCounter(
            descriptor: d("adapter_registrations", "total", "Adapter versions registered (new names and replacements)."))
        adaptersRegistered = registry.makeGauge(descriptor: d("adapters_registered", "", "Registered adapter names."))
        adaptersCached = registry.makeGauge(descriptor: d("adapters_cached", "", "Adapter versions in the resident LRU cache."))
        adapterCacheBytes = registry.makeGauge(
            descriptor: d("adapter_cache_used", "bytes", "Bytes of adapter weights in the LRU cache."))
        adapterCacheLimit = registry.makeGauge(
            descriptor: d("adapter_cache_limit", "bytes", "Adapter cache budget (--adapter-cache-mb)."))
        adapterLiveBytes = registry.makeGauge(
            descriptor: d("adapter_live", "bytes", "Bytes of adapter weights in memory (cache plus running sequences)."))
        adapterLoads = registry.makeCounter(
            descriptor: d("adapter_loads", "total", "Adapter loads from disk since start (cache misses)."))
        adapterEvictions = registry.makeCounter(
            descriptor: d("adapter_evictions", "total", "Adapter versions evicted from the cache since start."))
        storedCompletions = registry.makeGauge(
            descriptor: d("stored_completions", "", "Completions recorded with store: true and still in the store."))
        feedbackItems = registry.makeGauge(descriptor: d("feedback_items", "", "Feedback items in the store."))
        storePruned = registry.makeGauge(
            descriptor: d("stored_completions_pruned", "", "Stored completions pruned by --store-max-mb since start."))
        storeDiskFull = registry.makeGauge(
            descriptor: d("store_disk_full_errors", "", "Store writes refused for lack of disk space (507) since start."))
    }

    func recordAdapterRegistration() { adapterRegistrations.increment() }

    /// Counts one finished HTTP request by route template (e.g. `/v1/completions`) and status code.
    public func recordRequest(route: String, status: Int) {
        registry.makeCounter(
            descriptor: MetricNameDescriptor(
                namespace: "lorad", metricName: "http_requests", unitName: "total",
                helpText: "HTTP requests by route and status."),
            labels: [("route", route), ("status", String(status))]
        ).increment()
    }

    func recordPromptTokens(_ n: Int) { promptTokens.increment(by: Int64(n)) }
    func recordGeneratedTokens(_ n: Int) { generatedTokens.increment(by: Int64(n)) }
    func recordTimeToFirstToken(seconds: Double) { timeToFirstToken.record(seconds) }
    func recordInterTokenLatency(seconds: Double) { interTokenLatency.record(seconds) }
    func recordStep(sequences: Int, tokens: Int) {
        stepSequences.record(Double(sequences))
        stepTokens.record(Double(tokens))
    }
    func setQueue(depth: Int, running: Int, kvUsed: Int, kvLimit: Int) {
        queueDepth.set(Double(depth))
        runningSequences.set(Double(running))
        kvBytesUsed.set(Double(kvUsed))
        kvBytesLimit.set(Double(kvLimit))
    }

    /// The exposition text served at `GET /metrics` (`text/plain; version=0.0.4`).
    public func render() -> [UInt8] {
        if let source = sourceLock.withLock({ adapterSource }) {
            let a = source()
            adaptersRegistered.set(Double(a.registered))
            adaptersCached.set(Double(a.cached))
            adapterCacheBytes.set(Double(a.cachedBytes))
            adapterCacheLimit.set(Double(a.cacheLimitBytes))
            adapterLiveBytes.set(Double(a.liveBytes))
            // The registry counts since start; the counters advance by what is new since the last scrape.
            let (loads, evictions) = sourceLock.withLock { () -> (Int, Int) in
                defer { (countedLoads, countedEvictions) = (max(countedLoads, a.loads), max(countedEvictions, a.evictions)) }
                return (a.loads - countedLoads, a.evictions - countedEvictions)
            }
            if loads > 0 { adapterLoads.increment(by: Int64(loads)) }
            if evictions > 0 { adapterEvictions.increment(by: Int64(evictions)) }
        }
        if let source = sourceLock.withLock({ storeSource }) {
            let st = source()
            storedCompletions.set(Double(st.storedCompletions))
            feedbackItems.set(Double(st.feedback))
            storePruned.set(Double(st.pruned))
            storeDiskFull.set(Double(st.diskFullErrors))
        }
        var buffer: [UInt8] = []
        registry.emit(into: &buffer)
        return buffer
    }
}
