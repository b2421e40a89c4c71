//! `gpu-slicer-controller`: the Deployment that turns idle MIG space into
//! the slices pending pods ask for (docs/demand-mig.md).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use gpu_slicer_controller::lease::LeaseSettings;
use gpu_slicer_controller::run::{Options, run};

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Parser)]
#[command(
    name = "gpu-slicer-controller",
    version,
    about = "Turns idle MIG space into the slices pending pods ask for, by writing per-GPU MIG targets that gpu-slicer's node daemons apply"
)]
struct Cli {
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
    /// Namespace of the Lease (the controller's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "gpu-slicer")]
    namespace: String,
    /// Name of the Lease the replicas compete for.
    #[arg(long, env = "LEASE_NAME", default_value = "gpu-slicer-controller")]
    lease_name: String,
    /// This replica's identity in the Lease (the pod's name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// A Lease not renewed for this long may be taken by another replica.
    #[arg(long, env = "LEASE_DURATION_SECONDS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(2..=3600))]
    lease_duration_seconds: u64,
    /// How often the leader renews the Lease, and a standby tries to take it.
    #[arg(long, env = "LEASE_RETRY_SECONDS", default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=600))]
    lease_retry_seconds: u64,
    /// The leader stops (and exits) when it could not renew for this long; below the Lease's duration.
    #[arg(long, env = "LEASE_RENEW_DEADLINE_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    lease_renew_deadline_seconds: u64,
    /// A batch of pending pods closes this long after its first pod (nos's batchWindowTimeoutSeconds).
    #[arg(long, env = "BATCH_TIMEOUT_SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(0..=3600))]
    batch_timeout_seconds: u64,
    /// A batch closes when no pod has become pending for this long (nos's batchWindowIdleSeconds).
    #[arg(long, env = "BATCH_IDLE_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=3600))]
    batch_idle_seconds: u64,
    /// A free instance younger than this is never destroyed (hysteresis against flapping layouts).
    #[arg(long, env = "MIN_FREE_AGE_SECONDS", default_value_t = 120, value_parser = clap::value_parser!(u64).range(0..=86_400))]
    min_free_age_seconds: u64,
    /// Where /metrics and /healthz are served.
    #[arg(long, env = "METRICS_ADDRESS", default_value = "0.0.0.0:8080")]
    metrics_address: SocketAddr,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let builder = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    if cli.lease_renew_deadline_seconds >= cli.lease_duration_seconds {
        eprintln!(
            "error: --lease-renew-deadline-seconds ({}) must be below --lease-duration-seconds ({}), or a leader that lost the Lease could still act while another leads",
            cli.lease_renew_deadline_seconds, cli.lease_duration_seconds
        );
        return ExitCode::FAILURE;
    }
    let identity = cli.identity.clone().unwrap_or_else(|| {
        std::env::var("HOSTNAME")
            .unwrap_or_else(|_| format!("gpu-slicer-controller-{}", std::process::id()))
    });
    let options = Options {
        lease: LeaseSettings {
            namespace: cli.namespace,
            name: cli.lease_name,
            identity,
            duration: Duration::from_secs(cli.lease_duration_seconds),
            retry: Duration::from_secs(cli.lease_retry_seconds),
            renew_deadline: Duration::from_secs(cli.lease_renew_deadline_seconds),
        },
        batch_timeout_s: cli.batch_timeout_seconds,
        batch_idle_s: cli.batch_idle_seconds,
        min_free_age_s: cli.min_free_age_seconds,
        metrics_address: cli.metrics_address,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
