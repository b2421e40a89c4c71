//! A fake `nvidia-cuda-mps-control` for CI: the same two modes and the
//! same command language as the driver's, without a GPU.
//!
//! - `nvidia-cuda-mps-control -f`: the control daemon, in the foreground.
//!   It listens in `$CUDA_MPS_PIPE_DIRECTORY` (a Unix socket named
//!   `control`, where the real one keeps its named pipes), writes its pid to
//!   `nvidia-cuda-mps-control.pid` there, and logs to its standard output,
//!   as the driver's does in foreground mode (it then writes no
//!   `control.log`): `NEW UI`, `Cmd:<command>`, the answer, `UI closed`. It
//!   records the environment it was started with in
//!   `$CUDA_MPS_LOG_DIRECTORY/fake-mps.env`, for tests to read.
//! - `nvidia-cuda-mps-control` with no argument: the control client. It
//!   sends its standard input to the daemon and prints the answers; exit
//!   status 1 with `Cannot find MPS control daemon process` when no daemon
//!   listens, as the real one.
//!
//! Commands (one per line): `set_default_device_pinned_mem_limit <dev>
//! <N>M|<N>G`, `get_default_device_pinned_mem_limit <dev>`,
//! `set_default_active_thread_percentage <p>`,
//! `get_default_active_thread_percentage` (prints `<p>.0`, 100 by default;
//! the set command echoes it too, as driver 580's does),
//! `get_server_list`, `quit`. Anything else prints an error line, as the
//! real one does, with exit status 0.
//!
//! `FAKE_MPS_START_FAIL=<message>` makes the daemon exit 1 at start with
//! that message; `FAKE_MPS_START_DELAY_MS` delays its listening.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.first().map(String::as_str) {
        None => client(),
        Some("-f") => daemon(),
        Some(other) => {
            eprintln!(
                "fake nvidia-cuda-mps-control: unsupported argument {other} (only -f and none)"
            );
            2
        }
    };
    std::process::exit(code);
}

fn pipe_dir() -> PathBuf {
    PathBuf::from(
        std::env::var("CUDA_MPS_PIPE_DIRECTORY").unwrap_or_else(|_| "/tmp/nvidia-mps".into()),
    )
}

fn log_dir() -> PathBuf {
    PathBuf::from(
        std::env::var("CUDA_MPS_LOG_DIRECTORY").unwrap_or_else(|_| "/var/log/nvidia-mps".into()),
    )
}

fn client() -> i32 {
    let Ok(mut stream) = UnixStream::connect(pipe_dir().join("control")) else {
        eprintln!("Cannot find MPS control daemon process");
        return 1;
    };
    let mut input = Vec::new();
    if std::io::stdin().read_to_end(&mut input).is_err() {
        return 1;
    }
    if stream.write_all(&input).is_err() || stream.shutdown(std::net::Shutdown::Write).is_err() {
        return 1;
    }
    let mut answer = Vec::new();
    if stream.read_to_end(&mut answer).is_err() {
        return 1;
    }
    let _ = std::io::stdout().write_all(&answer);
    0
}

/// The daemon's log: its standard output, in the driver's line format.
struct Log;

impl Log {
    fn line(&self, text: &str) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "[fake Control {}] {text}", std::process::id());
        let _ = out.flush();
    }
}

fn daemon() -> i32 {
    let pipe = pipe_dir();
    let logs = log_dir();
    if let Ok(message) = std::env::var("FAKE_MPS_START_FAIL") {
        eprintln!("{message}");
        return 1;
    }
    if std::fs::create_dir_all(&pipe).is_err() || std::fs::create_dir_all(&logs).is_err() {
        eprintln!("cannot create {} or {}", pipe.display(), logs.display());
        return 1;
    }
    let env: Vec<String> = [
        "CUDA_VISIBLE_DEVICES",
        "CUDA_DEVICE_ORDER",
        "CUDA_MPS_PIPE_DIRECTORY",
        "CUDA_MPS_LOG_DIRECTORY",
    ]
    .iter()
    .map(|k| format!("{k}={}", std::env::var(k).unwrap_or_default()))
    .collect();
    let _ = std::fs::write(logs.join("fake-mps.env"), env.join("\n") + "\n");
    if let Some(ms) = std::env::var("FAKE_MPS_START_DELAY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        std::thread::sleep(Duration::from_millis(ms));
    }
    let socket = pipe.join("control");
    let _ = std::fs::remove_file(&socket);
    let listener = match UnixListener::bind(&socket) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen on {}: {e}", socket.display());
            return 1;
        }
    };
    let _ = std::fs::write(
        pipe.join("nvidia-cuda-mps-control.pid"),
        format!("{}\n", std::process::id()),
    );
    let log = Log;
    log.line(&format!(
        "Starting control daemon using socket {}",
        socket.display()
    ));
    let mut state = State::default();
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        log.line("NEW UI");
        if serve(stream, &mut state, &log) {
            log.line("UI closed");
            log.line("exit");
            cleanup(&pipe, &socket);
            return 0;
        }
        log.line("UI closed");
    }
    0
}

fn cleanup(pipe: &Path, socket: &Path) {
    let _ = std::fs::remove_file(socket);
    let _ = std::fs::remove_file(pipe.join("nvidia-cuda-mps-control.pid"));
}

#[derive(Default)]
struct State {
    limits: BTreeMap<String, String>,
    percentage: Option<u32>,
}

/// Answers one client; true when it asked the daemon to quit.
fn serve(stream: UnixStream, state: &mut State, log: &Log) -> bool {
    let Ok(mut out) = stream.try_clone() else {
        return false;
    };
    let mut quit = false;
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { break };
        let command = line.trim();
        if command.is_empty() {
            continue;
        }
        log.line(&format!("Cmd:{command}"));
        let answer_log = |answer: &Option<String>| {
            if let Some(a) = answer.as_deref().filter(|a| !a.is_empty()) {
                log.line(a);
            }
        };
        let words: Vec<&str> = command.split_whitespace().collect();
        let answer = match words.as_slice() {
            ["set_default_device_pinned_mem_limit", dev, value]
                if value
                    .strip_suffix(['M', 'G'])
                    .is_some_and(|n| n.parse::<u64>().is_ok()) =>
            {
                state
                    .limits
                    .insert((*dev).to_string(), (*value).to_string());
                None
            }
            ["get_default_device_pinned_mem_limit", dev] => Some(
                state
                    .limits
                    .get(*dev)
                    .cloned()
                    .unwrap_or_else(|| "0".into()),
            ),
            ["set_default_active_thread_percentage", p] => match p.parse::<u32>() {
                // The driver's control program echoes the new value.
                Ok(p) if (1..=100).contains(&p) => {
                    state.percentage = Some(p);
                    Some(format!("{p}.0"))
                }
                _ => Some(format!("Invalid percentage {p}")),
            },
            ["get_default_active_thread_percentage"] => {
                Some(format!("{}.0", state.percentage.unwrap_or(100)))
            }
            ["get_server_list"] => Some(String::new()),
            ["quit"] => {
                quit = true;
                None
            }
            _ => Some(format!("Invalid command {command}")),
        };
        answer_log(&answer);
        if let Some(answer) = answer
            && !answer.is_empty()
        {
            let _ = writeln!(out, "{answer}");
        }
    }
    quit
}
