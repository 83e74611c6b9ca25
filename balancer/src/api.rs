//! Wire types of the HTTP/JSON interface, shared by the server and
//! [`crate::client`], and the XML form of seed 000.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::registry::{Millis, Process, Registry, Status, Zone, ZoneId};

/// A process as shown to clients and operators.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessView {
    /// Process id.
    pub id: String,
    /// Zone.
    pub zone: ZoneId,
    /// Address.
    pub host: IpAddr,
    /// Port.
    pub port: u16,
    /// Players at the last push.
    pub online: u32,
    /// Seats held by picks not yet claimed.
    pub reserved: u32,
    /// Memory, MiB.
    pub used_memory_mb: u64,
    /// Version.
    pub version: String,
    /// OS pid, when known.
    pub pid: Option<u32>,
    /// Status code (101 running, 102 starting, 103 draining, 105 stopped).
    pub status: u16,
    /// Status name.
    pub status_name: String,
    /// Operator asked for a drain.
    pub draining: bool,
    /// Draining with no player and no reservation: safe to restart.
    pub drained: bool,
    /// The balancer spawned it.
    pub spawned: bool,
    /// Last push, unix ms on the balancer's clock (read at its start, then
    /// advanced by the monotonic clock: wall-clock steps since do not show).
    pub last_push_ms: Millis,
}

impl ProcessView {
    /// Builds the view of a registry entry.
    pub fn of(p: &Process) -> ProcessView {
        ProcessView {
            id: p.id.clone(),
            zone: p.zone,
            host: p.host,
            port: p.port,
            online: p.online,
            reserved: p.reservations.len() as u32,
            used_memory_mb: p.used_memory_mb,
            version: p.version.clone(),
            pid: p.pid,
            status: p.status.code(),
            status_name: p.status.name().to_string(),
            draining: p.draining,
            drained: p.is_drained() && p.status != Status::Stopped,
            spawned: p.spawned.is_some(),
            last_push_ms: p.last_push_ms,
        }
    }
}

/// One zone with its processes sorted (seed 000's `<server>`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZoneView {
    /// Zone id.
    pub id: ZoneId,
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Number of processes listed.
    pub size: usize,
    /// Seats per process.
    pub process_online_max: u32,
    /// Processes: running first, then fewest online (+ reserved), then least memory.
    pub processes: Vec<ProcessView>,
}

impl ZoneView {
    /// Builds the sorted view of a zone.
    pub fn of(registry: &Registry, zone: &Zone) -> ZoneView {
        let processes: Vec<ProcessView> = registry
            .sorted(zone.spec.id)
            .map(|list| list.into_iter().map(ProcessView::of).collect())
            .unwrap_or_default();
        ZoneView {
            id: zone.spec.id,
            name: zone.spec.name.clone(),
            version: zone.spec.version.clone(),
            size: processes.len(),
            process_online_max: zone.spec.process_online_max,
            processes,
        }
    }
}

/// A line of the zone list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZoneSummary {
    /// Zone id.
    pub id: ZoneId,
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Processes of any status.
    pub size: u64,
    /// Running processes.
    pub running: u64,
    /// Players on running and draining processes.
    pub online: u64,
    /// Seats reserved.
    pub reserved: u64,
}

/// Answer to a status push.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushReply {
    /// Status the balancer now gives the process.
    pub status: u16,
    /// Status name.
    pub status_name: String,
    /// Draining: stop taking new players that did not come through a pick.
    pub draining: bool,
}

/// Answer to a pick.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PickReply {
    /// Process id.
    pub id: String,
    /// Address to connect to.
    pub host: IpAddr,
    /// Port to connect to.
    pub port: u16,
    /// Reservation token; the game server may report it in `claimed`.
    pub reservation: u64,
    /// Seat released after this many ms if not claimed.
    pub expires_in_ms: u64,
}

/// Body of every 4xx/5xx answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable machine-readable code, e.g. `invalid_report`, `unknown_zone`.
    pub error: String,
    /// What happened and what to do.
    pub message: String,
    /// With `not_master`: the master's HTTP address, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master: Option<SocketAddr>,
}

/// Answer to `GET /v1/role`: what this balancer is in its hs pair.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleReply {
    /// `master`, `standby` (following a master), `candidate` (finding one), or
    /// `master` for a balancer without hs.
    pub role: String,
    /// Whether mutations are accepted here now.
    pub serving: bool,
    /// hs epoch (0 without hs).
    pub epoch: u32,
    /// The master's HTTP address, when known.
    pub master: Option<SocketAddr>,
    /// Replication positions, when hs is embedded.
    pub hs: Option<HsView>,
}

/// Replication numbers of the embedded hs node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HsView {
    /// One past the last record in this node's log.
    pub written: u64,
    /// Standby: records applied to its registry (position).
    pub applied: u64,
    /// Master: what the standby reports applied (position).
    pub acked_applied: u64,
    /// Master: a standby is connected.
    pub standby_connected: bool,
    /// Records published by this balancer.
    pub published: u64,
    /// Publishes that failed after the change was applied (rebuilt from the log).
    pub publish_failed: u64,
    /// Replicated records that could not be applied.
    pub replica_errors: u64,
}

/// Escapes text for an XML attribute.
fn xml_attr(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
}

/// Renders zones in seed 000's XML form:
/// `<servers><server id name version size><process id host port online usedMemory status/>…`.
/// `online` is the pushed count; sorting counts reservations too.
pub fn render_xml(zones: &[ZoneView]) -> String {
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<servers>\n");
    for z in zones {
        out.push_str("\t<server id=\"");
        let _ = write!(out, "{}", z.id);
        out.push_str("\" name=\"");
        xml_attr(&mut out, &z.name);
        out.push_str("\" version=\"");
        xml_attr(&mut out, &z.version);
        let _ = writeln!(out, "\" size=\"{}\">", z.size);
        for p in &z.processes {
            out.push_str("\t\t<process id=\"");
            xml_attr(&mut out, &p.id);
            let _ = writeln!(
                out,
                "\" host=\"{}\" port=\"{}\" online=\"{}\" usedMemory=\"{}\" status=\"{}\"/>",
                p.host, p.port, p.online, p.used_memory_mb, p.status
            );
        }
        out.push_str("\t</server>\n");
    }
    out.push_str("</servers>\n");
    out
}

/// The `Upgrade` token of a push stream.
pub const STREAM_UPGRADE: &str = "balancer-push";

/// One line the balancer writes on a push stream.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamReply {
    /// The process the line is about (absent for a stream-wide error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Status the balancer now gives the process (seed 000's codes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Status name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_name: Option<String>,
    /// Draining: stop taking new players that did not come through a pick.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draining: Option<bool>,
    /// Error code of a refused line (as in HTTP answers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What happened and what to do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// With `not_master`: the master's HTTP address, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master: Option<SocketAddr>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{RegistryLimits, RegistryOp, StatusReport, ZoneSpec};

    #[test]
    fn xml_matches_seed_shape_and_escapes() {
        let spec = ZoneSpec {
            id: 1,
            name: "天上<人间>".into(),
            version: "v1.0.0 \"20131104\"".into(),
            process_online_max: 10,
            spawn: None,
        };
        let mut r = Registry::new(vec![spec], RegistryLimits::default());
        for (id, port, online) in [
            ("00:16:3E:00:14:A6-10001", 1861, 0),
            ("00:16:3E:00:14:A6-9894", 1860, 4),
        ] {
            let report = StatusReport {
                id: id.into(),
                zone: 1,
                host: "121.199.13.143".parse().unwrap(),
                port,
                online,
                used_memory_mb: 57,
                version: "v".into(),
                pid: None,
                claimed: vec![],
            };
            r.apply(&RegistryOp::Push { now_ms: 0, report }).unwrap();
        }
        let views: Vec<ZoneView> = r.zones().map(|z| ZoneView::of(&r, z)).collect();
        let xml = render_xml(&views);
        let expected = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<servers>\n\
            \t<server id=\"1\" name=\"天上&lt;人间&gt;\" version=\"v1.0.0 &quot;20131104&quot;\" size=\"2\">\n\
            \t\t<process id=\"00:16:3E:00:14:A6-10001\" host=\"121.199.13.143\" port=\"1861\" online=\"0\" usedMemory=\"57\" status=\"101\"/>\n\
            \t\t<process id=\"00:16:3E:00:14:A6-9894\" host=\"121.199.13.143\" port=\"1860\" online=\"4\" usedMemory=\"57\" status=\"101\"/>\n\
            \t</server>\n</servers>\n";
        assert_eq!(xml, expected);
    }
}
