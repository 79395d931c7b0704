//! Container logs as kubelet keeps them: one file per container instance in the CRI log format
//! (`<RFC 3339 nano time> <stdout|stderr> <F|P> <text>`), the current instance's and the
//! previous one's, nothing older.
//!
//! A container's stdout and stderr are pipes; a copier process per instance (forked by the
//! supervisor, so the supervisor's own loop stays as it is) stamps each line with the time it
//! arrived and appends it to the log. The copier holds an exclusive flock on the log while it
//! runs, so a reader can tell when an instance's output is complete.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::emulator::state::PodDir;

/// kubelet splits longer lines into partial (`P`) entries of this size.
const MAX_LINE: usize = 16 * 1024;

/// The log of the current instance of `container`.
pub fn current(dir: &PodDir, container: &str) -> PathBuf {
    dir.log(container)
}

/// The log of the instance before the current one.
pub fn previous(dir: &PodDir, container: &str) -> PathBuf {
    dir.logs().join(format!("{container}.previous.log"))
}

/// Before an instance starts: the current log becomes the previous one (replacing the older).
pub fn rotate(dir: &PodDir, container: &str) -> io::Result<()> {
    match std::fs::rename(current(dir, container), previous(dir, container)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Appends `text` as entries of `stream` stamped now (the supervisor's own notes).
pub fn append(path: &Path, stream: &str, text: &str) -> io::Result<()> {
    let mut out = Vec::new();
    let now = SystemTime::now();
    for line in text.split_inclusive('\n') {
        entry(&mut out, now, stream, line.as_bytes());
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?
        .write_all(&out)
}

/// The pipes a container instance writes to, and its log: [`Pipes::spawn_copier`] starts the
/// copier and returns the write ends, the container's fds 1 and 2.
pub struct Pipes {
    writers: [OwnedFd; 2],
    readers: [OwnedFd; 2],
    log: File,
}

impl Pipes {
    /// Opens (appends to) the instance's log at `path` and makes the two pipes.
    pub fn new(path: &Path) -> io::Result<Pipes> {
        let log = OpenOptions::new().create(true).append(true).open(path)?;
        let (out_r, out_w) = super::child::channel()?;
        let (err_r, err_w) = super::child::channel()?;
        Ok(Pipes {
            writers: [out_w, err_w],
            readers: [out_r, err_r],
            log,
        })
    }

    /// Forks the copier, which runs until both pipes are closed by every holder (the
    /// container and whatever it started), then exits. The caller reaps it as any orphan.
    ///
    /// The caller must be single-threaded: the copier runs ordinary Rust code after fork.
    pub fn spawn_copier(self) -> io::Result<[OwnedFd; 2]> {
        // SAFETY: the caller is single-threaded (the supervisor checks it), so the child may
        // allocate; it only touches what it owns and exits without returning.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        let Pipes {
            writers,
            readers,
            log,
        } = self;
        if pid == 0 {
            drop(writers);
            // SAFETY: naming ourselves, and unblocking the signals the supervisor waits for:
            // the copier is the supervisor's fork, so a sweep of stray supervisors (matched
            // by command line) may find it, and SIGTERM should then end it at once.
            unsafe {
                libc::prctl(libc::PR_SET_NAME, c"log-copier".as_ptr());
                let empty: libc::sigset_t = std::mem::zeroed();
                libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            }
            // SAFETY: _exit ends the child without running the parent's destructors twice.
            unsafe { libc::_exit(i32::from(copy(&readers, log).is_err())) }
        }
        Ok(writers)
    }
}

/// The copier's loop: poll both pipes, stamp whole lines, flush a partial line at EOF.
fn copy(readers: &[OwnedFd; 2], mut log: File) -> io::Result<()> {
    // SAFETY: flock on our own open file.
    unsafe { libc::flock(log.as_raw_fd(), libc::LOCK_EX) };
    let names = ["stdout", "stderr"];
    let mut pending: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
    let mut open = [true, true];
    let mut buf = vec![0u8; 64 * 1024];
    while open.iter().any(|o| *o) {
        let mut fds: Vec<libc::pollfd> = (0..2)
            .filter(|i| open[*i])
            .map(|i| libc::pollfd {
                fd: readers[i].as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: fds is a valid array of pollfd for the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for p in fds.iter().filter(|p| p.revents != 0) {
            let i = if p.fd == readers[0].as_raw_fd() { 0 } else { 1 };
            // SAFETY: reading into our buffer from our pipe.
            let got = unsafe { libc::read(p.fd, buf.as_mut_ptr().cast(), buf.len()) };
            let now = SystemTime::now();
            let mut out = Vec::new();
            if got <= 0 {
                if got < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                open[i] = false;
                if !pending[i].is_empty() {
                    entry(&mut out, now, names[i], &pending[i]);
                    pending[i].clear();
                }
            } else {
                pending[i].extend_from_slice(&buf[..got as usize]);
                let mut rest: &[u8] = &pending[i];
                loop {
                    let cut = match rest.iter().position(|b| *b == b'\n') {
                        Some(nl) if nl < MAX_LINE => nl + 1,
                        _ if rest.len() >= MAX_LINE => MAX_LINE,
                        _ => break,
                    };
                    entry(&mut out, now, names[i], &rest[..cut]);
                    rest = &rest[cut..];
                }
                pending[i] = rest.to_vec();
            }
            log.write_all(&out)?;
        }
    }
    Ok(())
}

/// One CRI log entry for `text` (a whole line ending in `\n` is `F`, anything else `P`).
fn entry(out: &mut Vec<u8>, at: SystemTime, stream: &str, text: &[u8]) {
    let (tag, body) = match text.strip_suffix(b"\n") {
        Some(line) => ("F", line),
        None => ("P", text),
    };
    out.extend_from_slice(format!("{} {stream} {tag} ", rfc3339(at)).as_bytes());
    out.extend_from_slice(body);
    out.push(b'\n');
}

/// One entry read back from a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// As written: RFC 3339 with nanoseconds, UTC.
    pub time: String,
    /// Nanoseconds since the epoch.
    pub nanos: u128,
    /// The text; a whole line ends in `\n`.
    pub text: Vec<u8>,
}

/// The entries of a log, in order; lines that are not entries (a damaged file) are skipped.
pub fn parse(bytes: &[u8]) -> Vec<Entry> {
    bytes
        .split_inclusive(|b| *b == b'\n')
        .filter(|l| l.ends_with(b"\n"))
        .filter_map(|line| {
            let line = &line[..line.len() - 1];
            let mut parts = line.splitn(4, |b| *b == b' ');
            let time = std::str::from_utf8(parts.next()?).ok()?;
            let _stream = parts.next()?;
            let tag = parts.next()?;
            let body = parts.next().unwrap_or_default();
            let mut text = body.to_vec();
            if tag == b"F" {
                text.push(b'\n');
            }
            Some(Entry {
                time: time.to_string(),
                nanos: parse_rfc3339(time)?,
                text,
            })
        })
        .collect()
}

/// Whether the copier of the open log `f` is done (or there never was one). It works on the
/// file however it was renamed since it was opened.
pub fn complete(f: &File) -> bool {
    // SAFETY: flock on an open file; our shared lock is dropped at once.
    unsafe {
        let done = libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) == 0;
        if done {
            libc::flock(f.as_raw_fd(), libc::LOCK_UN);
        }
        done
    }
}

/// `2006-01-02T15:04:05.000000000Z`.
pub fn rfc3339(at: SystemTime) -> String {
    let d = at.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

fn parse_rfc3339(s: &str) -> Option<u128> {
    let b = s.as_bytes();
    if b.len() != 30 || b[4] != b'-' || b[10] != b'T' || b[19] != b'.' || b[29] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<u64>().ok();
    let days = days_from_civil(num(0..4)? as i64, num(5..7)?, num(8..10)?);
    let secs = days as u64 * 86_400 + num(11..13)? * 3600 + num(14..16)? * 60 + num(17..19)?;
    Some(u128::from(secs) * 1_000_000_000 + u128::from(num(20..29)?))
}

/// Howard Hinnant's algorithms: days since 1970-01-01 to a proleptic Gregorian date and back.
fn civil_from_days(z: i64) -> (i64, u64, u64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097) as u64;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe as i64 + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn days_from_civil(y: i64, m: u64, d: u64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400) as u64;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe as i64 - 719_468
}

/// A Go-style duration as `--since` takes it: `90s`, `5m`, `1h30m`, `250ms`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let value: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += Duration::try_from_secs_f64(value * unit).ok()?;
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip() {
        for secs in [0u64, 951_782_400, 1_796_000_000, 4_102_444_800] {
            let at = UNIX_EPOCH + Duration::new(secs, 123_456_789);
            let s = rfc3339(at);
            assert_eq!(
                parse_rfc3339(&s),
                Some(u128::from(secs) * 1_000_000_000 + 123_456_789),
                "{s}"
            );
        }
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000000000Z"
        );
    }

    #[test]
    fn entries_round_trip() {
        let mut out = Vec::new();
        let at = UNIX_EPOCH + Duration::from_secs(1);
        entry(&mut out, at, "stdout", b"one two\n");
        entry(&mut out, at, "stderr", b"part");
        entry(&mut out, at, "stderr", b"ial\n");
        let text: Vec<u8> = parse(&out).into_iter().flat_map(|e| e.text).collect();
        assert_eq!(text, b"one two\npartial\n");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("1d"), None);
        assert_eq!(parse_duration(""), None);
    }
}
