//! Readings for `/stats`: the process's resident memory from `/proc`. (The
//! SoC temperature comes from the board's thermal governor.)

/// Resident set size of this process in bytes (`VmRSS`).
pub fn rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = s
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_rss() {
        assert!(rss_bytes().unwrap() > 0);
    }
}
