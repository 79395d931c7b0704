//! flatnet's nftables table, `inet flatnet`: anti-spoofing for every node and, when the cluster
//! CIDR is known, egress masquerade. Both are one table so that they are replaced together.
//!
//! The table is replaced whole in one `nft -f` transaction, so there is never a moment with
//! half the rules (or, on an upgrade, with neither the old table nor the new one). It carries a
//! hash of its content in its comment: a pass compares it with what it wants and touches
//! nothing when they agree, and a table deleted or edited by hand is put back at the next pass.
//!
//! A pass reads that comment and the counters over nfnetlink ([`read`]), not with `nft list`:
//! the tool costs an exec and ~4 ms of CPU, paid by every agent on every pass, where the two
//! requests cost microseconds. A write goes through libnftables, the `nft` tool's own library
//! (same package), loaded at run time: ~1 ms of CPU where an exec of `nft -f` costs ~5 (the
//! fork, the exec and the loading of its libraries, on every write), which every agent pays
//! on every change. Without the library the agent execs the tool.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::Path;
use std::process::Stdio;

use crate::netns::NetNs;
use crate::nfnetlink;

/// The table's family and name.
pub const TABLE: &str = "inet flatnet";

/// Tables older flatnets made: removed in the transaction that writes [`TABLE`], and by
/// uninstall. (Before anti-spoofing, the egress rules lived in an `ip` table of the same name.)
const LEGACY: &[&str] = &["ip flatnet"];

/// The whole table, ready for `nft -f`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    script: String,
    marker: String,
}

impl Ruleset {
    /// The table whose body (counters, sets, chains) is `body`.
    pub fn new(body: &str) -> Ruleset {
        let marker = format!("flatnet {:016x}", crate::stable_hash::fnv1a(body.bytes()));
        // Creating a table first makes its delete valid when it does not exist yet; the whole
        // file is one transaction.
        let mut script = String::new();
        for t in LEGACY.iter().chain([&TABLE]) {
            script += &format!("table {t} {{}}\ndelete table {t}\n");
        }
        script += &format!("table {TABLE} {{\n  comment \"{marker}\"\n{body}}}\n");
        Ruleset { script, marker }
    }

    pub fn script(&self) -> &str {
        &self.script
    }

    /// Whether `found` (of [`read`]) is this ruleset's table.
    pub fn is_current(&self, found: &Found) -> bool {
        found.comment.as_deref() == Some(self.marker.as_str())
    }
}

/// What a pass needs of the table in the kernel.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Found {
    /// The table's comment: the marker of the ruleset that wrote it.
    pub comment: Option<String>,
    /// The named counters and their packet counts.
    pub counters: BTreeMap<String, u64>,
}

/// Reads the table's comment and counters over nfnetlink in `ns` (else the caller's
/// namespace); None when the table does not exist.
pub fn read(ns: Option<&NetNs>) -> io::Result<Option<Found>> {
    let sock = match ns {
        Some(ns) => ns.run(nfnetlink::socket)??,
        None => nfnetlink::socket()?,
    };
    // The requests below are for the inet family (NFPROTO_INET).
    let name = TABLE.strip_prefix("inet ").expect("an inet table");
    let mut table = name.as_bytes().to_vec();
    table.push(0);
    let mut found = Found::default();
    let get_table = request(NFT_MSG_GETTABLE, NLM_F_ACK, &[(NFTA_TABLE_NAME, &table)]);
    let answer = nfnetlink::exchange(&sock, &get_table, NFNL_SUBSYS_NFTABLES, |kind, attrs| {
        if kind == NFT_MSG_NEWTABLE {
            found.comment = nfnetlink::attributes(attrs)
                .find(|(t, _)| *t == NFTA_TABLE_USERDATA)
                .and_then(|(_, udata)| comment(udata));
        }
    });
    match answer {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        other => other?,
    }
    let counter = NFT_OBJECT_COUNTER.to_be_bytes();
    let get_counters = request(
        NFT_MSG_GETOBJ,
        libc::NLM_F_DUMP as u16,
        &[(NFTA_OBJ_TABLE, &table), (NFTA_OBJ_TYPE, &counter)],
    );
    nfnetlink::exchange(&sock, &get_counters, NFNL_SUBSYS_NFTABLES, |kind, attrs| {
        if kind != NFT_MSG_NEWOBJ {
            return;
        }
        let mut name = None;
        let mut packets = None;
        for (t, v) in nfnetlink::attributes(attrs) {
            match t {
                NFTA_OBJ_NAME => name = c_string(v),
                NFTA_OBJ_DATA => {
                    packets = nfnetlink::attributes(v)
                        .find(|(t, _)| *t == NFTA_COUNTER_PACKETS)
                        .and_then(|(_, v)| v.try_into().ok().map(u64::from_be_bytes));
                }
                _ => {}
            }
        }
        if let (Some(name), Some(packets)) = (name, packets) {
            found.counters.insert(name, packets);
        }
    })?;
    Ok(Some(found))
}

// From linux/netfilter/nfnetlink.h and nf_tables.h (libc has the netlink basics only).
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFPROTO_INET: u8 = 1;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_NEWOBJ: u16 = 18;
const NFT_MSG_GETOBJ: u16 = 19;
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_USERDATA: u16 = 6;
const NFTA_OBJ_TABLE: u16 = 1;
const NFTA_OBJ_NAME: u16 = 2;
const NFTA_OBJ_TYPE: u16 = 3;
const NFTA_OBJ_DATA: u16 = 4;
const NFT_OBJECT_COUNTER: u32 = 1;
const NFTA_COUNTER_PACKETS: u16 = 2;
/// libnftnl's user-data type of a table's comment (`NFTNL_UDATA_TABLE_COMMENT`).
const UDATA_TABLE_COMMENT: u8 = 0;
const NLM_F_ACK: u16 = libc::NLM_F_ACK as u16;

/// An nf_tables request of `msg` for the inet family with `attrs`.
fn request(msg: u16, flags: u16, attrs: &[(u16, &[u8])]) -> Vec<u8> {
    let mut b = Vec::new();
    for (kind, value) in attrs {
        nfnetlink::attr(&mut b, *kind, value);
    }
    nfnetlink::request(NFNL_SUBSYS_NFTABLES, msg, flags, NFPROTO_INET, &b)
}

/// A NUL-terminated string attribute.
fn c_string(v: &[u8]) -> Option<String> {
    let s = v.split(|&c| c == 0).next()?;
    String::from_utf8(s.to_vec()).ok()
}

/// The comment in a table's user data: libnftnl's records of type, length, value.
fn comment(mut udata: &[u8]) -> Option<String> {
    while let [kind, len, rest @ ..] = udata {
        let value = rest.get(..usize::from(*len))?;
        if *kind == UDATA_TABLE_COMMENT {
            return c_string(value);
        }
        udata = &rest[usize::from(*len)..];
    }
    None
}

/// `nft list table inet flatnet` in `ns` (else the caller's namespace); None when the table
/// does not exist.
pub fn list(ns: Option<&NetNs>) -> Option<String> {
    let (family, name) = TABLE.split_once(' ').expect("family and name");
    nft(&["list", "table", family, name], None, ns).ok()
}

/// Why the `nft` tool did not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("run nft (package nftables): {0}")]
    Run(std::io::Error),
    #[error("nft {args}: {stderr}")]
    Refused { args: String, stderr: String },
}

/// Writes `ruleset` (the table and the removal of legacy tables, in one transaction).
pub fn write(ruleset: &Ruleset, ns: Option<&NetNs>) -> Result<(), NftError> {
    run_script(ruleset.script(), ns)
}

/// Runs an `nft -f` script: through libnftables when it loads, else with the tool.
fn run_script(script: &str, ns: Option<&NetNs>) -> Result<(), NftError> {
    let Some(lib) = libnftables::get() else {
        return nft(&["-f", "-"], Some(script), ns).map(|_| ());
    };
    let refused = |stderr: String| NftError::Refused {
        args: "-f -".into(),
        stderr,
    };
    match ns {
        // A context's socket lives in the namespace it was made in, so another namespace's
        // write makes its own context on a thread inside that namespace.
        Some(ns) => ns
            .run(|| lib.context().and_then(|mut c| c.run(script)))
            .map_err(NftError::Run)?
            .map_err(refused),
        // The agent's own namespace: one context kept for the process, its cache reused.
        None => lib.own().run(script).map_err(refused),
    }
}

/// Deletes the table and the legacy ones; absent is fine.
pub fn remove(ns: Option<&NetNs>) -> Result<(), NftError> {
    let script: String = LEGACY
        .iter()
        .chain([&TABLE])
        .map(|t| format!("table {t} {{}}\ndelete table {t}\n"))
        .collect();
    run_script(&script, ns)
}

/// The named counters of a listing and their packet counts. nft prints each as
/// `counter NAME {` with `packets N bytes M` on the next line.
pub fn counters(listing: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let mut lines = listing.lines().map(str::trim);
    while let Some(line) = lines.next() {
        let Some(name) = line
            .strip_prefix("counter ")
            .and_then(|r| r.strip_suffix(" {"))
        else {
            continue;
        };
        let packets = lines.next().and_then(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("packets"))
                .then(|| words.next()?.parse().ok())
                .flatten()
        });
        if let Some(p) = packets {
            out.insert(name.to_string(), p);
        }
    }
    out
}

/// Runs `nft args…` with `stdin`; its stdout, or its stderr as the error.
fn nft(args: &[&str], stdin: Option<&str>, ns: Option<&NetNs>) -> Result<String, NftError> {
    let mut child = crate::netns::command(Path::new("nft"), &[], ns)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(NftError::Run)?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // nft reads all of stdin before it answers; a write that fails is nft gone, and its
        // exit status below says why.
        let _ = pipe.write_all(text.as_bytes());
    }
    let out = child.wait_with_output().map_err(NftError::Run)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NftError::Refused {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// libnftables through `dlopen`: no build-time dependency, and a machine without the library
/// still has the tool's path.
mod libnftables {
    use std::ffi::{c_char, c_int, c_void, CStr, CString};
    use std::sync::{Mutex, MutexGuard, OnceLock};

    type CtxNew = unsafe extern "C" fn(u32) -> *mut c_void;
    type CtxFree = unsafe extern "C" fn(*mut c_void);
    type CtxInt = unsafe extern "C" fn(*mut c_void) -> c_int;
    type GetBuffer = unsafe extern "C" fn(*mut c_void) -> *const c_char;
    type RunCmd = unsafe extern "C" fn(*mut c_void, *const c_char) -> c_int;

    pub struct Lib {
        ctx_new: CtxNew,
        ctx_free: CtxFree,
        buffer_output: CtxInt,
        buffer_error: CtxInt,
        error_buffer: GetBuffer,
        run_cmd: RunCmd,
        own: Mutex<Option<Context>>,
    }

    /// One `struct nft_ctx`. It is used by one thread at a time (behind `&mut` or the mutex).
    pub struct Context {
        lib: &'static Lib,
        ctx: *mut c_void,
    }

    // SAFETY: a libnftables context has no thread affinity; it must only not be used by two
    // threads at once, which `&mut self` on every use ensures.
    unsafe impl Send for Context {}

    /// The library, loaded once; None when it cannot be.
    pub fn get() -> Option<&'static Lib> {
        static LIB: OnceLock<Option<Lib>> = OnceLock::new();
        LIB.get_or_init(|| {
            let lib = load();
            if lib.is_none() {
                tracing::info!(
                    "libnftables.so.1 not loaded: the nftables table is written with the nft tool"
                );
            }
            lib
        })
        .as_ref()
    }

    fn load() -> Option<Lib> {
        // SAFETY: dlopen of a library by name; it stays loaded for the process (never closed).
        let handle = unsafe { libc::dlopen(c"libnftables.so.1".as_ptr(), libc::RTLD_NOW) };
        if handle.is_null() {
            return None;
        }
        let sym = |name: &CStr| {
            // SAFETY: dlsym on a live handle.
            let p = unsafe { libc::dlsym(handle, name.as_ptr()) };
            (!p.is_null()).then_some(p)
        };
        // SAFETY: each symbol is libnftables' public function of that name, whose C signature
        // (libnftables(3)) the type it is cast to matches.
        unsafe {
            Some(Lib {
                ctx_new: std::mem::transmute::<*mut c_void, CtxNew>(sym(c"nft_ctx_new")?),
                ctx_free: std::mem::transmute::<*mut c_void, CtxFree>(sym(c"nft_ctx_free")?),
                buffer_output: std::mem::transmute::<*mut c_void, CtxInt>(sym(
                    c"nft_ctx_buffer_output",
                )?),
                buffer_error: std::mem::transmute::<*mut c_void, CtxInt>(sym(
                    c"nft_ctx_buffer_error",
                )?),
                error_buffer: std::mem::transmute::<*mut c_void, GetBuffer>(sym(
                    c"nft_ctx_get_error_buffer",
                )?),
                run_cmd: std::mem::transmute::<*mut c_void, RunCmd>(sym(
                    c"nft_run_cmd_from_buffer",
                )?),
                own: Mutex::new(None),
            })
        }
    }

    impl Lib {
        /// A new context, its netlink socket in the calling thread's namespace, its output
        /// and errors kept in buffers rather than printed.
        pub fn context(&'static self) -> Result<Context, String> {
            // SAFETY: nft_ctx_new with NFT_CTX_DEFAULT (0); the result is checked for NULL.
            let ctx = unsafe { (self.ctx_new)(0) };
            if ctx.is_null() {
                return Err("libnftables: nft_ctx_new failed".into());
            }
            let c = Context { lib: self, ctx };
            // SAFETY: a live context.
            let buffered =
                unsafe { (self.buffer_output)(ctx) == 0 && (self.buffer_error)(ctx) == 0 };
            if !buffered {
                return Err("libnftables: cannot buffer its output".into());
            }
            Ok(c)
        }

        /// The context of the process's own namespace, made at the first use.
        pub fn own(&'static self) -> OwnContext {
            let mut guard = self.own.lock().unwrap_or_else(|e| e.into_inner());
            if guard.is_none() {
                *guard = self.context().ok();
            }
            OwnContext(guard)
        }
    }

    pub struct OwnContext(MutexGuard<'static, Option<Context>>);

    impl OwnContext {
        pub fn run(&mut self, script: &str) -> Result<(), String> {
            match self.0.as_mut() {
                Some(c) => c.run(script),
                None => Err("libnftables: no context".into()),
            }
        }
    }

    impl Context {
        /// Runs `script` as `nft -f` would: one transaction; its error messages, if it fails.
        pub fn run(&mut self, script: &str) -> Result<(), String> {
            let text = CString::new(script).map_err(|_| "a NUL byte in the script".to_string())?;
            // SAFETY: a live context and a NUL-terminated buffer that outlives the call.
            let rc = unsafe { (self.lib.run_cmd)(self.ctx, text.as_ptr()) };
            if rc == 0 {
                return Ok(());
            }
            // SAFETY: a live context whose error buffer was enabled; the string it returns
            // lives until the next call on the context, and is copied at once.
            let err = unsafe {
                let p = (self.lib.error_buffer)(self.ctx);
                if p.is_null() {
                    String::new()
                } else {
                    CStr::from_ptr(p).to_string_lossy().trim().to_string()
                }
            };
            Err(if err.is_empty() {
                format!("libnftables refused the script (status {rc})")
            } else {
                err
            })
        }
    }

    impl Drop for Context {
        fn drop(&mut self) {
            // SAFETY: a live context, freed once.
            unsafe { (self.lib.ctx_free)(self.ctx) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_transaction_replaces_the_table_and_drops_the_legacy_one() {
        let r = Ruleset::new("  chain c {\n  }\n");
        let s = r.script();
        assert!(
            s.starts_with(
                "table ip flatnet {}\ndelete table ip flatnet\n\
                 table inet flatnet {}\ndelete table inet flatnet\ntable inet flatnet {\n  comment \"flatnet "
            ),
            "{s}"
        );
        assert!(s.ends_with("  chain c {\n  }\n}\n"), "{s}");
    }

    #[test]
    fn the_comment_changes_with_the_content_only() {
        let a = Ruleset::new("  chain a {\n  }\n");
        assert_eq!(a, Ruleset::new("  chain a {\n  }\n"));
        assert_ne!(a, Ruleset::new("  chain b {\n  }\n"));
        let found = Found {
            comment: Some(a.marker.clone()),
            ..Found::default()
        };
        assert!(a.is_current(&found));
        assert!(!Ruleset::new("  chain b {\n  }\n").is_current(&found));
    }

    #[test]
    fn counters_are_read_from_a_listing() {
        let listing = "table inet flatnet {\n\tcomment \"flatnet 1\"\n\
            \tcounter spoofed_ipv4 {\n\t\tpackets 12 bytes 840\n\t}\n\n\
            \tcounter router_adverts {\n\t\tpackets 0 bytes 0\n\t}\n\
            \tchain antispoof {\n\t\ticmpv6 type nd-router-advert counter name \"router_adverts\" drop\n\t}\n}\n";
        let c = counters(listing);
        assert_eq!(c.get("spoofed_ipv4"), Some(&12));
        assert_eq!(c.get("router_adverts"), Some(&0));
        assert_eq!(c.len(), 2, "{c:?}");
    }
}
