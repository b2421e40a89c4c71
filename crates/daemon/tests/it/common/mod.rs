//! Shared by the end-to-end tests of both binaries (the cli's tests include
//! this file): the real binary (`crate::BIN`, started as `BIN run ...`), a
//! temp directory, the stand-in kubelet, and waiting on node status (events,
//! not sleeps).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kubelet_sim::{Capacity, Kubelet, Options};

use crate::BIN;
/// Generous: CI machines are slow and shared; nothing here is a timing test.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// A running daemon, stopped with SIGTERM when dropped.
pub struct Daemon {
    pub child: Child,
}

impl Daemon {
    pub fn start(dir: &Path, args: &[&str]) -> Daemon {
        Daemon::spawn(daemon_command(dir, args, &[], None))
    }

    fn spawn(mut command: Command) -> Daemon {
        Daemon {
            child: command.spawn().expect("start gpu-slicer"),
        }
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        self.child.wait().expect("wait for gpu-slicer")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn temp_dir() -> tempfile::TempDir {
    // Short paths: Unix socket paths are limited to 107 bytes.
    tempfile::Builder::new()
        .prefix("gs")
        .tempdir_in("/tmp")
        .expect("temp dir")
}

pub async fn kubelet(dir: &Path) -> Kubelet {
    Kubelet::start(Options::new(dir))
        .await
        .expect("stand-in kubelet")
}

pub fn counts(status: &BTreeMap<String, Capacity>) -> BTreeMap<String, usize> {
    status
        .iter()
        .filter(|(_, c)| c.capacity > 0)
        .map(|(k, c)| (k.clone(), c.allocatable))
        .collect()
}

pub fn expect(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// Waits until the node advertises exactly `want` (all healthy).
pub async fn wait_for(kubelet: &Kubelet, want: &BTreeMap<String, usize>) {
    let target = want.clone();
    kubelet
        .wait_until(move |status| counts(status) == target, TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("node never advertised {want:?}: {e}"));
}

/// Where a test keeps its own files (config, topology, events) beside the
/// device-plugin directory `dir`: a subdirectory, because a starting kubelet
/// deletes every other file there, as the real one does.
pub fn aside(dir: &Path) -> PathBuf {
    let files = dir.join("files");
    std::fs::create_dir_all(&files).expect("create the test's file directory");
    files
}

pub fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = aside(dir).join("config.yaml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// The fake NVML library (testing/fake-nvml).
pub fn fake_nvml() -> PathBuf {
    test_artifacts::built("libfake_nvml.so")
}

/// The fake `nvidia-cuda-mps-control` (testing/fake-mps).
pub fn fake_mps() -> PathBuf {
    test_artifacts::built("nvidia-cuda-mps-control")
}

/// The daemon's command line as every test starts it. `prelude`, when set,
/// is shell run first in the same process (`ulimit -n 256`, `umask 000`),
/// so what it sets holds for the daemon.
fn daemon_command(
    dir: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    prelude: Option<&str>,
) -> Command {
    let mut command = match prelude {
        None => Command::new(BIN),
        Some(prelude) => {
            let mut shell = Command::new("sh");
            shell
                .arg("-c")
                .arg(format!("{prelude} && exec \"$0\" \"$@\""))
                .arg(BIN);
            shell
        }
    };
    command
        .arg("run")
        .arg("--device-plugin-path")
        .arg(dir)
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        // GPU_SLICER_TEST_LOGS=1 shows the daemon's logs when debugging.
        .stderr(if std::env::var_os("GPU_SLICER_TEST_LOGS").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        });
    for (key, value) in env {
        command.env(key, value);
    }
    command
}

/// Starts the daemon after a shell `prelude` (limits, umask) that holds for it.
pub fn start_under_shell(dir: &Path, prelude: &str, args: &[&str]) -> Daemon {
    Daemon::spawn(daemon_command(dir, args, &[], Some(prelude)))
}

/// Starts the daemon with extra environment variables, its log written to
/// the returned file (for tests of what an operator reads).
pub fn start_logged(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (Daemon, PathBuf) {
    let log = aside(dir).join("daemon.log");
    let file = std::fs::File::create(&log).expect("log file");
    let mut command = daemon_command(dir, args, env, None);
    command.stderr(file);
    (Daemon::spawn(command), log)
}

/// Waits until the log file holds a line containing `needle`; returns it.
pub async fn wait_for_log(log: &Path, needle: &str) -> String {
    let deadline = std::time::Instant::now() + TIMEOUT;
    while std::time::Instant::now() < deadline {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains(needle)) {
            return line.to_string();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "no log line contains {needle:?}; the log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// Starts the daemon with extra environment variables.
pub fn start_with_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Daemon {
    Daemon::spawn(daemon_command(dir, args, env, None))
}

/// A free TCP port on 127.0.0.1 (for `--metrics-address`).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// GET `/metrics` on `address`; the body, or `None` when nothing listens yet.
pub fn scrape(address: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).ok()?;
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
}

/// Scrapes until a metric line equals `line` (the daemon is another
/// process: there is no event to wait on).
pub async fn wait_for_metric_line(address: &str, line: &str) {
    let deadline = std::time::Instant::now() + TIMEOUT;
    while std::time::Instant::now() < deadline {
        if scrape(address).is_some_and(|body| body.lines().any(|l| l == line)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("metric line {line:?} never appeared");
}
