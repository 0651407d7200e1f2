//! Readings for `/stats`: the process's resident memory from `/proc`. (The
//! SoC temperature comes from the board's thermal governor.)

/// Resident set size of this process in bytes (`VmRSS`).
pub fn rss_bytes() -> Option<u64> {
    crate::board::proc_kib_field(std::path::Path::new("/proc/self/status"), "VmRSS")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_rss() {
        assert!(rss_bytes().unwrap() > 0);
    }
}
