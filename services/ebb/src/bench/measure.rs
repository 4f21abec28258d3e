//! What a benchmark measures besides wall time: latency percentiles, and the process's CPU time,
//! resident memory and TCP connections from `/proc` (Linux only; `None` elsewhere).

use std::time::Duration;

/// Kernel clock ticks per second for `/proc/self/stat` times. Linux exports these in USER_HZ,
/// which is 100 on every architecture Ebb runs on (`getconf CLK_TCK` prints 100).
const CLK_TCK: f64 = 100.0;

/// The `p` quantile (nearest rank) of `values`, in milliseconds to 0.1 ms; 0 when empty.
pub fn percentile_ms(values: &[Duration], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    round(sorted[rank - 1].as_secs_f64() * 1000.0, 1)
}

pub fn round(x: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (x * scale).round() / scale
}

/// User plus system CPU time of this process so far, from `/proc/self/stat` (Linux only).
pub fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse_cpu_seconds(&stat)
}

/// Fields 14 and 15 (utime, stime) of a `/proc/<pid>/stat` line, counted after the command
/// name, which is parenthesized and may hold spaces.
pub(super) fn parse_cpu_seconds(stat: &str) -> Option<f64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / CLK_TCK)
}

pub fn cpu_delta(before: Option<f64>) -> Option<f64> {
    Some(cpu_seconds()? - before?)
}

/// Growth of resident memory between two readings, per miner.
pub fn per_miner(after: Option<u64>, before: Option<u64>, miners: usize) -> Option<u64> {
    Some(after?.saturating_sub(before?) / miners as u64)
}

/// TCP connections this network namespace has opened (`ActiveOpens` in `/proc/net/snmp`).
pub fn tcp_active_opens() -> Option<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
    parse_active_opens(&snmp)
}

/// The `ActiveOpens` column of the two `Tcp:` lines (names, then values).
fn parse_active_opens(snmp: &str) -> Option<u64> {
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next()?, tcp.next()?);
    let column = names.split_whitespace().position(|n| n == "ActiveOpens")?;
    values.split_whitespace().nth(column)?.parse().ok()
}

pub fn opens_delta(before: Option<u64>, miners: usize) -> Option<f64> {
    let opened = tcp_active_opens()?.checked_sub(before?)?;
    Some(round(opened as f64 / miners as f64, 2))
}

/// Resident memory of this process, from `VmRSS` in `/proc/self/status` (Linux only).
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_rss_bytes(&status)
}

/// The most resident memory this process has had, from `VmHWM` (Linux only).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_status_kb(&status, "VmHWM:")
}

fn parse_rss_bytes(status: &str) -> Option<u64> {
    parse_status_kb(status, "VmRSS:")
}

/// A `<field>  <n> kB` line of `/proc/<pid>/status`, in bytes.
fn parse_status_kb(status: &str, field: &str) -> Option<u64> {
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc_figures() {
        let stat = "4242 (tokio (rt) 1) S 1 4242 4242 0 -1 4194560 9000 0 0 0 1234 56 0 0 20 0 \
                    9 0 100 1000000 2000 18446744073709551615";
        assert_eq!(parse_cpu_seconds(stat), Some(12.9));
        assert_eq!(parse_cpu_seconds("garbage"), None);
        let status = "Name:\tebb\nVmPeak:\t  9000 kB\nVmRSS:\t   20480 kB\nThreads:\t3\n";
        assert_eq!(parse_rss_bytes(status), Some(20 * 1024 * 1024));
        assert_eq!(parse_rss_bytes("Name:\tebb\n"), None);
        assert_eq!(parse_status_kb(status, "VmPeak:"), Some(9000 * 1024));
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\nTcp: RtoAlgorithm RtoMin ActiveOpens PassiveOpens\nTcp: 1 200 4711 4700\n";
        assert_eq!(parse_active_opens(snmp), Some(4711));
        assert_eq!(parse_active_opens("Tcp: ActiveOpens\n"), None);
        assert!(cpu_seconds().is_some() && rss_bytes().is_some() && tcp_active_opens().is_some());
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let ms =
            |v: &[u64]| -> Vec<Duration> { v.iter().map(|&m| Duration::from_millis(m)).collect() };
        let hundred: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile_ms(&ms(&hundred), 0.50), 50.0);
        assert_eq!(percentile_ms(&ms(&hundred), 0.99), 99.0);
        assert_eq!(percentile_ms(&ms(&hundred), 1.0), 100.0);
        assert_eq!(percentile_ms(&ms(&[7]), 0.99), 7.0);
        assert_eq!(percentile_ms(&[], 0.5), 0.0);
    }
}
