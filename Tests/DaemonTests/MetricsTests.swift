// DaemonMetrics: the Prometheus exposition of counts the adapter registry keeps since start.

import Daemon
import Foundation
import Synchronization
import Testing

@Suite struct MetricsTests {
    /// The registry's load and eviction counts are monotonic, so they are exposed as counters (`_total`, TYPE
    /// counter) whose value is the registry's count at each scrape, however many scrapes there are.
    @Test func adapterLoadsAndEvictionsAreCounters() {
        let metrics = DaemonMetrics()
        let stats = Mutex(AdapterStats())
        metrics.setAdapterSource { stats.withLock { $0 } }
        func scrape() -> String { String(decoding: metrics.render(), as: UTF8.self) }
        stats.withLock { $0.loads = 3; $0.evictions = 1 }
        var text = scrape()
        #expect(text.contains("# TYPE lorad_adapter_loads_total counter"))
        #expect(text.contains("# TYPE lorad_adapter_evictions_total counter"))
        #expect(text.contains("\nlorad_adapter_loads_total 3\n"))
        text = scrape()
        #expect(text.contains("\nlorad_adapter_loads_total 3\n"))
        stats.withLock { $0.loads = 7; $0.evictions = 4 }
        text = scrape()
        #expect(text.contains("\nlorad_adapter_loads_total 7\n"), "\(text)")
        #expect(text.contains("\nlorad_adapter_evictions_total 4\n"))
    }
}
