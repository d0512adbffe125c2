//! The process metrics every Prometheus client library exports (CPU, memory, file descriptors, start time), read from `/proc`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The process metrics every Prometheus client library exports, read from
/// `/proc/self` at each scrape (absent on systems without it).
pub(super) struct ProcessMetrics {
    cpu_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    resident_bytes: Gauge,
    virtual_bytes: Gauge,
    open_fds: Gauge,
    max_fds: Gauge,
    start_time_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl ProcessMetrics {
    pub(super) fn register(registry: &mut Registry) -> ProcessMetrics {
        let m = ProcessMetrics {
            cpu_seconds: Default::default(),
            resident_bytes: Default::default(),
            virtual_bytes: Default::default(),
            open_fds: Default::default(),
            max_fds: Default::default(),
            start_time_seconds: Default::default(),
        };
        registry.register(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            m.cpu_seconds.clone(),
        );
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            m.resident_bytes.clone(),
        );
        registry.register(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
            m.virtual_bytes.clone(),
        );
        registry.register(
            "process_open_fds",
            "Number of open file descriptors",
            m.open_fds.clone(),
        );
        registry.register(
            "process_max_fds",
            "Maximum number of open file descriptors",
            m.max_fds.clone(),
        );
        registry.register(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch in seconds",
            m.start_time_seconds.clone(),
        );
        m
    }

    pub(super) fn update(&self) {
        // /proc/self/stat: fields after the command's closing parenthesis;
        // utime and stime are the 12th and 13th, starttime the 20th, vsize
        // the 21st and rss (pages) the 22nd. Times are in USER_HZ, which
        // Linux fixes at 100 for this interface.
        const TICKS: f64 = 100.0;
        const PAGE: i64 = 4096;
        let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
            return;
        };
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            return;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
        if let (Some(u), Some(s)) = (num(11), num(12)) {
            let cpu = (u + s) as f64 / TICKS - self.cpu_seconds.get();
            if cpu > 0.0 {
                self.cpu_seconds.inc_by(cpu);
            }
        }
        if let Some(v) = num(20) {
            self.virtual_bytes.set(v as i64);
        }
        if let Some(pages) = num(21) {
            self.resident_bytes.set(pages as i64 * PAGE);
        }
        let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|v| v.trim().parse::<u64>().ok())
        });
        if let (Some(boot), Some(start)) = (boot, num(19)) {
            self.start_time_seconds
                .set(boot as f64 + start as f64 / TICKS);
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds.set(fds.count() as i64);
        }
        if let Some(max) = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("Max open files"))
                    .and_then(|l| l.split_whitespace().nth(3)?.parse::<i64>().ok())
            })
        {
            self.max_fds.set(max);
        }
    }
}
