//! The `warren` binary: prints the CRDs and reconciles topology files straight into RabbitMQ.
//! Everything it does is a thin call into the `warren_operator` library.

use std::{path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};
use warren_operator::cli::{self, ApplyOptions, Report};

/// Warren: RabbitMQ topology as Kubernetes resources.
#[derive(Parser)]
#[command(name = "warren", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// How the file commands reach RabbitMQ besides `--management-url`: environment only, so no
/// secret ever sits on a command line.
const CONNECTION_ENV: &str = "\
Environment:
  WARREN_MANAGEMENT_URL                 management API for every Broker (as --management-url)
  WARREN_RABBITMQ_USERNAME / _PASSWORD  management credentials (guest/guest only for a loopback URL)
  WARREN_RABBITMQ_CA_FILE               PEM bundle of extra trusted CAs
  WARREN_RABBITMQ_CLIENT_CERT_FILE / _CLIENT_KEY_FILE
                                        PEM client certificate and key";

#[derive(Subcommand)]
enum Command {
    /// Print every CustomResourceDefinition as multi-document YAML (what crds/ holds).
    Crds,
    /// Reconcile Warren resources from files straight into RabbitMQ (no Kubernetes).
    ///
    /// Exit status: 0 when RabbitMQ matches the files, 2 on conflicts or errors.
    #[command(after_help = CONNECTION_ENV)]
    Apply(ApplyArgs),
    /// Print what `apply` would do, changing nothing.
    ///
    /// Exit status: 0 when converged, 1 when there are changes or conflicts, 2 on errors.
    #[command(after_help = CONNECTION_ENV)]
    Diff(DiffArgs),
    /// Delete from RabbitMQ what the files declare (except `deletionPolicy: retain`, and objects
    /// that differ from the files: those are reported as conflicts and left in place).
    ///
    /// Exit status: 0 when everything is gone (or retained), 2 on conflicts or errors.
    #[command(after_help = CONNECTION_ENV)]
    Delete(DeleteArgs),
    /// Write a live vhost's topology as Warren resources (multi-document YAML on stdout).
    #[command(after_help = CONNECTION_ENV)]
    Export(ExportArgs),
    /// Run the controllers in a cluster (leader election, /metrics, /healthz, /readyz).
    Operator(warren_operator::controller::OperatorArgs),
}

/// The files a command reads, where they go, and the broker override.
#[derive(Args)]
struct Files {
    /// File or directory (read recursively) of YAML documents; repeatable.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<PathBuf>,
    /// Put every resource in this vhost instead of its spec.vhost.
    #[arg(long)]
    vhost: Option<String>,
    /// Management API to use for every Broker instead of its spec.managementUrl.
    #[arg(long, env = "WARREN_MANAGEMENT_URL")]
    management_url: Option<String>,
}

#[derive(Args)]
struct ApplyArgs {
    #[command(flatten)]
    files: Files,
    /// Delete objects the files no longer hold, in the vhosts the files use.
    #[arg(long)]
    prune: bool,
}

#[derive(Args)]
struct DiffArgs {
    #[command(flatten)]
    files: Files,
    /// Plan deleting objects the files no longer hold, as `apply --prune` would.
    #[arg(long)]
    prune: bool,
    /// Show unchanged objects too.
    #[arg(long)]
    all: bool,
}

#[derive(Args)]
struct DeleteArgs {
    #[command(flatten)]
    files: Files,
}

#[derive(Args)]
struct ExportArgs {
    /// Management API of the broker to read.
    #[arg(
        long,
        env = "WARREN_MANAGEMENT_URL",
        default_value = "http://127.0.0.1:15672"
    )]
    management_url: String,
    /// Virtual host to export.
    #[arg(long, default_value = "/")]
    vhost: String,
    /// Name of the Broker resource the exported objects refer to.
    #[arg(long, default_value = "local")]
    broker: String,
    /// The exported Broker's amqpUrl; by default the management host with the node's AMQP port.
    #[arg(long)]
    amqp_url: Option<String>,
}

/// Exit status for errors, as `kubectl diff` uses it.
const EXIT_ERROR: u8 = 2;

fn options(args: &Files, prune: bool) -> Result<ApplyOptions, warren_operator::Error> {
    let mut options = ApplyOptions::from_env()?;
    options.prune = prune;
    options.vhost.clone_from(&args.vhost);
    if args.management_url.is_some() {
        options.management_url.clone_from(&args.management_url);
    }
    Ok(options)
}

fn print_skipped(report: &Report) {
    for skipped in &report.skipped {
        eprintln!("skipped (not Warren topology): {skipped}");
    }
}

fn fail(error: &warren_operator::Error) -> ExitCode {
    eprintln!("error: {}", warren_operator::error_chain(error));
    ExitCode::from(EXIT_ERROR)
}

async fn run(command: Command) -> ExitCode {
    match command {
        Command::Operator(args) => match warren_operator::controller::run(args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => fail(&error),
        },
        Command::Crds => match warren_operator::crd::crds_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("error: cannot render the CRDs: {error}");
                ExitCode::from(EXIT_ERROR)
            }
        },
        Command::Apply(args) => {
            let options = match options(&args.files, args.prune) {
                Ok(options) => options,
                Err(error) => return fail(&error),
            };
            match cli::apply_with_progress(&args.files.files, &options, &mut |step| {
                println!("{step}")
            })
            .await
            {
                Ok(report) => finish(&report),
                Err(error) => fail(&error),
            }
        }
        Command::Delete(args) => {
            let options = match options(&args.files, false) {
                Ok(options) => options,
                Err(error) => return fail(&error),
            };
            match cli::delete_with_progress(&args.files.files, &options, &mut |step| {
                println!("{step}")
            })
            .await
            {
                Ok(report) => finish(&report),
                Err(error) => fail(&error),
            }
        }
        Command::Export(args) => {
            let exported = match ApplyOptions::from_env() {
                Ok(options) => {
                    cli::export(
                        &args.management_url,
                        &args.broker,
                        &args.vhost,
                        args.amqp_url.as_deref(),
                        &options,
                    )
                    .await
                }
                Err(error) => Err(error),
            };
            match exported {
                Ok(yaml) => {
                    print!("{yaml}");
                    ExitCode::SUCCESS
                }
                Err(error) => fail(&error),
            }
        }
        Command::Diff(args) => {
            let options = match options(&args.files, args.prune) {
                Ok(options) => options,
                Err(error) => return fail(&error),
            };
            match cli::diff(&args.files.files, &options).await {
                Ok(report) => {
                    print_skipped(&report);
                    for step in report
                        .steps
                        .iter()
                        .filter(|s| args.all || s.action.changes_rabbitmq() || s.is_conflict())
                    {
                        println!("{step}");
                    }
                    print_notes(&report);
                    println!("{}", report.summary());
                    if report.is_converged() {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    }
                }
                Err(error) => fail(&error),
            }
        }
    }
}

fn finish(report: &Report) -> ExitCode {
    print_skipped(report);
    print_notes(report);
    println!("{}", report.summary());
    if report.succeeded() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_ERROR)
    }
}

/// What the plan deliberately leaves alone (e.g. an old binding without --prune).
fn print_notes(report: &Report) {
    for note in &report.notes {
        println!("note: {note}");
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    runtime.block_on(run(cli.command))
}
