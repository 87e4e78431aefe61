//! The worker process's resident memory and CPU time, read from `/proc/self` (Linux) at
//! scrape time. Elsewhere [`sample`] returns `None` and the metrics are left out.

/// One reading of the process's resources.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Resident set size, bytes.
    pub rss_bytes: u64,
    /// User + system CPU time of all threads, seconds.
    pub cpu_seconds: f64,
}

/// Clock ticks per second of `/proc/<pid>/stat`'s times: USER_HZ, which the kernel fixes at
/// 100 for user space on every architecture Rust targets with Linux (`getconf CLK_TCK`).
const USER_HZ: f64 = 100.0;

/// The process's resources now, or `None` where `/proc/self` cannot be read.
pub fn sample() -> Option<Sample> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    Some(Sample { rss_bytes: rss_bytes(&status)?, cpu_seconds: cpu_seconds(&stat)? })
}

/// `VmRSS:` of `/proc/self/status` (kB), in bytes.
fn rss_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// `utime + stime` (fields 14 and 15) of `/proc/self/stat`, in seconds. The command name
/// (field 2) may hold spaces and parentheses, so fields are counted after its last `)`.
fn cpu_seconds(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // `rest` starts at field 3 (state): utime is the 12th field after it, stime the 13th.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_status_and_stat() {
        assert_eq!(rss_bytes("Name:\tx\nVmRSS:\t  2048 kB\nVmSwap:\t0 kB\n"), Some(2048 * 1024));
        let stat = "123 (onad (p) x) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 8 0 100 0 0";
        assert_eq!(cpu_seconds(stat), Some(3.0));
        let me = sample().expect("/proc/self is readable on Linux");
        assert!(me.rss_bytes > 1 << 20 && me.cpu_seconds >= 0.0, "{me:?}");
    }
}
