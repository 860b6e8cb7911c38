//! Long trace operations draw a progress bar when stderr is a terminal and write none when
//! it is not (CI logs, pipes). The terminal is a real pseudo-terminal: the binary decides by
//! `isatty`, so nothing short of one exercises the drawing path.

use std::fs::File;
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};

fn moeflow() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_moeflow"));
    c.env("MOEFLOW_LOG", "error").stdout(Stdio::null());
    c
}

/// A fresh pseudo-terminal: (master, slave).
fn pty() -> (OwnedFd, OwnedFd) {
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two new descriptors into the out-pointers; name, termios and
    // window size may be null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just opened and are owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) }
}

/// Runs `args` with stderr on a pseudo-terminal; returns everything written to it.
fn on_terminal(args: &[&str]) -> String {
    let (master, slave) = pty();
    let mut child = moeflow()
        .args(args)
        .stderr(Stdio::from(slave))
        .spawn()
        .unwrap();
    // The child holds the only slave descriptor now: reading ends (EIO) once it exits.
    let mut out = Vec::new();
    let mut f = File::from(master);
    let mut buf = [0u8; 4096];
    loop {
        match f.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    assert!(child.wait().unwrap().success(), "{args:?}");
    String::from_utf8_lossy(&out).into_owned()
}

fn piped(args: &[&str]) -> String {
    let out = moeflow()
        .args(args)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?}: {out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn synth(out: &Path) -> Vec<String> {
    let args = [
        "trace",
        "synth",
        "--format",
        "paper",
        "--target-bytes",
        "2M",
    ];
    let out = ["--out", s(out)];
    args.iter().chain(&out).map(|a| a.to_string()).collect()
}

#[test]
fn bars_are_drawn_on_a_terminal_and_nowhere_else() {
    let tmp = tempfile::tempdir().unwrap();
    let (tree, tree2) = (tmp.path().join("tree"), tmp.path().join("tree2"));

    // Writing a synthetic tree: the "writing" bar.
    let tty = on_terminal(&refs(&synth(&tree)));
    assert!(tty.contains("writing"), "no bar on the terminal: {tty:?}");
    let quiet = piped(&refs(&synth(&tree2)));
    assert!(!quiet.contains("writing"), "a bar on a pipe: {quiet:?}");

    // Reading it: bytes read, rate and eta.
    let analyze = |out: &str| -> Vec<String> {
        let out = tmp.path().join(out);
        ["trace", "analyze", s(&tree), "--out", s(&out)]
            .map(String::from)
            .to_vec()
    };
    let tty = on_terminal(&refs(&analyze("a")));
    assert!(tty.contains("eta"), "no bar on the terminal: {tty:?}");
    let quiet = piped(&refs(&analyze("b")));
    assert!(!quiet.contains("eta"), "a bar on a pipe: {quiet:?}");
}
