// PeerCredentials: who is on the other end of a Unix-socket connection, from the kernel (SO_PEERCRED, see
// unix(7)), and the admin policy built on it: root, the daemon's own user, and members of a configured admin
// group may manage adapters; anyone else who can reach the socket may only generate.

import Foundation
import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The peer process's credentials as the kernel recorded them at connect time (`struct ucred`).
public struct PeerCredentials: Sendable, Equatable {
    public var pid: Int32
    public var uid: UInt32
    public var gid: UInt32

    /// - Parameters: pid, uid, gid: the peer's process id, user id and primary group id.
    public init(pid: Int32, uid: UInt32, gid: UInt32) {
        self.pid = pid
        self.uid = uid
        self.gid = gid
    }

    /// Layout-compatible with `struct ucred { pid_t pid; uid_t uid; gid_t gid; }` (unix(7)).
    struct UCred: Sendable {
        var pid: Int32 = 0
        var uid: UInt32 = 0
        var gid: UInt32 = 0
    }

    /// Reads SO_PEERCRED from a connected Unix-socket channel; nil if the channel is not one.
    static func of(_ channel: any Channel) async -> PeerCredentials? {
        guard let provider = channel as? any SocketOptionProvider else { return nil }
        let soPeerCred: Int32 = 17  // SO_PEERCRED on Linux (asm-generic/socket.h)
        do {
            let c: UCred = try await provider.unsafeGetSocketOption(
                level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(soPeerCred)
            ).get()
            return PeerCredentials(pid: c.pid, uid: c.uid, gid: c.gid)
        } catch {
            return nil
        }
    }

    /// Supplementary group ids of the peer process, from `/proc/<pid>/status` (`Groups:` line); empty if gone.
    func supplementaryGroups() -> [UInt32] {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return [] }
        for line in text.split(separator: "\n") where line.hasPrefix("Groups:") {
            return line.dropFirst("Groups:".count).split(separator: " ").compactMap { UInt32($0.trimmingCharacters(in: .whitespaces)) }
        }
        return []
    }
}

/// Who may call the adapter management routes.
public struct AdminPolicy: Sendable, Equatable {
    /// The daemon's own uid (always allowed, as is root).
    public var ownUID: UInt32
    /// Members of this group (primary or supplementary) are allowed too.
    public var adminGroupID: UInt32?
    /// The group's name, for messages.
    public var adminGroupName: String?

    public init(ownUID: UInt32 = getuid(), adminGroupID: UInt32? = nil, adminGroupName: String? = nil) {
        self.ownUID = ownUID
        self.adminGroupID = adminGroupID
        self.adminGroupName = adminGroupName
    }

    /// Resolves a group name (or numeric id) with getgrnam(3).
    /// - Throws: ``ConfigError/invalidValue(key:reason:)`` when the group does not exist.
    public static func resolve(adminGroup: String?) throws -> AdminPolicy {
        guard let g = adminGroup, !g.isEmpty else { return AdminPolicy() }
        if let id = UInt32(g) { return AdminPolicy(adminGroupID: id, adminGroupName: g) }
        guard let entry = getgrnam(g) else {
            throw ConfigError.invalidValue(key: "admin_group", reason: "no group named '\(g)'")
        }
        return AdminPolicy(adminGroupID: entry.pointee.gr_gid, adminGroupName: g)
    }

    /// Whether `peer` may manage adapters. Unknown credentials are refused.
    public func allows(_ peer: PeerCredentials?) -> Bool {
        guard let p = peer else { return false }
        if p.uid == 0 || p.uid == ownUID { return true }
        guard let g = adminGroupID else { return false }
        return p.gid == g || p.supplementaryGroups().contains(g)
    }
}
