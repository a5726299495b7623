// JournalLogging: swift-log records as structured journal entries when lorad's stderr is the journal.
//
// systemd sets JOURNAL_STREAM=<st_dev>:<st_ino> for services whose stdout/stderr are connected to journald
// (systemd.exec(5)). Comparing it with fstat(2) on stderr tells whether our stderr still goes there (it does not
// if the process was started by hand from a shell that inherited the variable). Only then are records sent
// natively with sd_journal_sendv(3), which keeps fields (priority, code location, metadata) that a text line on
// stderr would flatten. The variadic sd_journal_send is not callable from Swift; sd_journal_sendv takes iovecs
// and accepts values with line breaks (it switches to the binary field encoding by itself).
//
// Field names (journal-fields(7)): MESSAGE, PRIORITY (syslog level 0–7), SYSLOG_IDENTIFIER, CODE_FILE, CODE_LINE,
// CODE_FUNC are the standard ones; lorad's own fields are LORAD_<KEY>, where KEY is the metadata key upper-cased
// with every character outside [A-Z0-9_] replaced by `_` (journal field names allow only those, and must not
// start with `_`, which marks trusted fields).

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CSystemd
import Logging

/// Sends lorad's logs to the systemd journal when the process runs as a service whose stderr is the journal.
public enum JournalLogging {
    /// If `JOURNAL_STREAM` names the device and inode of stderr (fd 2), bootstraps swift-log with a
    /// ``JournalLogHandler`` at `level` and returns `true`; otherwise changes nothing and returns `false`, and the
    /// caller bootstraps its usual handler (e.g. `StreamLogHandler.standardError`).
    ///
    /// `LoggingSystem.bootstrap` may run only once per process; this function bootstraps at most once and
    /// returns its first answer on later calls.
    /// - Parameter level: minimum level recorded by every logger made after the bootstrap.
    /// - Returns: whether the journal handler is now the process's log handler.
    public static func bootstrapIfJournal(level: Logger.Level) -> Bool {
        state.lock()
        defer { state.unlock() }
        if let decided = state.decided { return decided }
        let useJournal = stderrIsJournal()
        if useJournal {
            LoggingSystem.bootstrap { label in
                var handler = JournalLogHandler(label: label)
                handler.logLevel = level
                return handler
            }
        }
        state.decided = useJournal
        return useJournal
    }

    /// Whether `JOURNAL_STREAM` (`"<dev>:<ino>"`, decimal) matches stderr's `st_dev` and `st_ino`.
    public static func stderrIsJournal() -> Bool {
        guard let raw = getenv("JOURNAL_STREAM") else { return false }
        let parts = String(cString: raw).split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2, let dev = UInt64(parts[0]), let ino = UInt64(parts[1]) else { return false }
        var st = stat()
        guard fstat(2, &st) == 0 else { return false }
        return UInt64(st.st_dev) == dev && UInt64(st.st_ino) == ino
    }

    /// The one-time decision, guarded by a heap-allocated mutex (a stable address, unlike a stored property).
    private final class State: @unchecked Sendable {
        private let mutex: UnsafeMutablePointer<pthread_mutex_t>
        var decided: Bool?
        init() {
            mutex = .allocate(capacity: 1)
            mutex.initialize(to: pthread_mutex_t())
            pthread_mutex_init(mutex, nil)
        }
        func lock() { pthread_mutex_lock(mutex) }
        func unlock() { pthread_mutex_unlock(mutex) }
    }
    private static let state = State()
}

/// A swift-log handler that writes each record as one journal entry through `sd_journal_sendv`.
///
/// Fields: `MESSAGE`, `PRIORITY` (see ``priority(for:)``), `SYSLOG_IDENTIFIER=lorad`, `CODE_FILE`, `CODE_LINE`,
/// `CODE_FUNC`, `LORAD_LOGGER=<label>`, `LORAD_SOURCE=<module>`, `LORAD_ERROR` when the record carries an error,
/// and one `LORAD_<KEY>=<value>` per metadata entry (handler metadata, then the metadata provider's, then the
/// record's own, later ones winning). Query them with e.g. `journalctl -u lorad -o verbose LORAD_REQUEST_ID=…`.
public struct JournalLogHandler: LogHandler {
    /// The logger's label, recorded as `LORAD_LOGGER`.
    public let label: String
    public var logLevel: Logger.Level = .info
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?

    /// - Parameters:
    ///   - label: logger label, e.g. `"lorad.engine"`.
    ///   - metadataProvider: contextual metadata added to every record; defaults to the global provider.
    public init(label: String, metadataProvider: Logger.MetadataProvider? = LoggingSystem.metadataProvider) {
        self.label = label
        self.metadataProvider = metadataProvider
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        let fields = journalFields(for: event)
        // Each field is its own C string; iovecs point into them for the duration of the call.
        var buffers: [[UInt8]] = fields.map { Array($0.utf8) }
        buffers.withUnsafeMutableBufferPointer { bufs in
            var iov: [iovec] = []
            iov.reserveCapacity(bufs.count)
            for i in bufs.indices {
                bufs[i].withUnsafeMutableBytes { raw in
                    iov.append(iovec(iov_base: raw.baseAddress, iov_len: raw.count))
                }
            }
            // The pointers stay valid: `bufs` is neither resized nor reassigned until sendv returns.
            _ = sd_journal_sendv(iov, Int32(iov.count))
        }
    }

    /// The journal fields (`NAME=value`) written for `event`, in order; exposed for inspection and tests.
    public func journalFields(for event: LogEvent) -> [String] {
        var merged = metadata
        if let provided = metadataProvider?.get() {
            merged.merge(provided) { _, new in new }
        }
        if let own = event.metadata {
            merged.merge(own) { _, new in new }
        }
        var fields = [
            "MESSAGE=\(event.message)",
            "PRIORITY=\(Self.priority(for: event.level))",
            "SYSLOG_IDENTIFIER=lorad",
            "CODE_FILE=\(event.file)",
            "CODE_LINE=\(event.line)",
            "CODE_FUNC=\(event.function)",
            "LORAD_LOGGER=\(label)",
            "LORAD_SOURCE=\(event.source)",
        ]
        if let error = event.error {
            fields.append("LORAD_ERROR=\(error)")
        }
        for key in merged.keys.sorted() {
            guard let value = merged[key] else { continue }
            fields.append("\(Self.fieldName(forMetadataKey: key))=\(value)")
        }
        return fields
    }

    /// syslog(3) priority for a swift-log level: trace and debug → 7 (LOG_DEBUG), info → 6, notice → 5,
    /// warning → 4, error → 3, critical → 2 (LOG_CRIT).
    public static func priority(for level: Logger.Level) -> Int {
        switch level {
        case .trace, .debug: return 7
        case .info: return 6
        case .notice: return 5
        case .warning: return 4
        case .error: return 3
        case .critical: return 2
        }
    }

    /// `LORAD_` + `key` upper-cased, with characters outside `[A-Z0-9_]` replaced by `_`, cut to the journal's
    /// 64-character limit on field names. Example: `"request-id"` → `"LORAD_REQUEST_ID"`.
    public static func fieldName(forMetadataKey key: String) -> String {
        var name = "LORAD_"
        for scalar in key.unicodeScalars {
            switch scalar {
            case "a"..."z": name += String(scalar).uppercased()
            case "A"..."Z", "0"..."9", "_": name.unicodeScalars.append(scalar)
            default: name.append("_")
            }
        }
        return String(name.prefix(64))
    }
}
