//! `sotto witness` and `sotto audit`: watching a server's key-transparency log from outside,
//! with no account.

use crate::output::to_json;
use clap::Args;
use sotto_client::ClientError;
use sotto_client::log::{audit::audit, witness::Witness};
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `sotto witness`.
#[derive(Debug, Args)]
pub struct WitnessArgs {
    /// The server whose log to witness.
    #[arg(long)]
    server: String,
    /// Directory of the witness's key and of the last epoch it cosigned.
    #[arg(long, default_value = "./sotto-witness")]
    data: PathBuf,
    /// Name of the witness's key, when it is made (default: sotto-witness/ and a key prefix).
    #[arg(long)]
    name: Option<String>,
    /// Print the verifier key (for `sotto server --witness` and `sotto init --witness`) and
    /// exit.
    #[arg(long)]
    key: bool,
    /// One round (catch up to the newest epoch and cosign it), then exit.
    #[arg(long)]
    once: bool,
    /// While the log stands still, cosign its newest epoch again after this many seconds (at
    /// most 300: clients refuse cosignatures older than 600 s by default).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=300))]
    refresh: u64,
    /// Allow plain http:// to a server that is not on this machine (test networks only).
    #[arg(long)]
    insecure_http: bool,
    /// One JSON object per round.
    #[arg(long)]
    json: bool,
}

/// `sotto witness`.
pub async fn witness(args: WitnessArgs) -> Result<ExitCode, ClientError> {
    let mut witness = Witness::open(
        &args.data,
        &args.server,
        args.name.as_deref(),
        args.insecure_http,
    )?;
    if args.key {
        println!("{}", witness.vkey());
        return Ok(ExitCode::SUCCESS);
    }
    if witness.epoch().is_none() && !args.json {
        eprintln!("witness key: {}", witness.vkey());
        eprintln!(
            "first round: the log's newest epoch is trusted as the start; every epoch after it \
             is cosigned only once its append-only proof verifies"
        );
    }
    let mut failures = 0u32;
    loop {
        // Catching up shows its progress; a witness keeping up stays quiet.
        let mut progress = |epoch: u64, newest: u64| {
            if !args.json && epoch.is_multiple_of(1000) && epoch < newest {
                eprintln!("verified and cosigned epoch {epoch} of {newest}");
            }
        };
        match witness.round(!args.once, args.refresh, &mut progress).await {
            Ok(round) => {
                failures = 0;
                if args.json {
                    println!(
                        "{}",
                        to_json(&serde_json::json!({
                            "epoch": round.epoch,
                            "cosigned": round.cosigned,
                        }))
                    );
                } else if args.once || round.cosigned.len() > 1 {
                    println!(
                        "epoch {}: {} cosigned this round",
                        round.epoch,
                        round.cosigned.len()
                    );
                }
            }
            // A server out of reach, or busy, is waited for; a log that fails a check is never
            // cosigned again by this witness: it stops, and says why.
            Err(e) if e.is_transient() && !args.once => {
                failures = failures.saturating_add(1);
                if failures == 1 {
                    eprintln!("{e}; trying again every 5 seconds");
                }
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            }
            Err(e) => return Err(e),
        }
        if args.once {
            return Ok(ExitCode::SUCCESS);
        }
    }
}

/// Arguments of `sotto audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// The server whose log to audit.
    #[arg(long)]
    server: String,
    /// Directory of this auditor's record of roots.
    #[arg(long, default_value = "./sotto-audit")]
    data: PathBuf,
    /// Allow plain http:// to a server that is not on this machine (test networks only).
    #[arg(long)]
    insecure_http: bool,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// `sotto audit`.
pub async fn run_audit(args: AuditArgs) -> Result<ExitCode, ClientError> {
    let mut progress = |epoch: u64, newest: u64| {
        if !args.json && epoch.is_multiple_of(1000) {
            eprintln!("verified epoch {epoch} of {newest}");
        }
    };
    let report = audit(&args.data, &args.server, args.insecure_http, &mut progress).await?;
    if args.json {
        println!("{}", to_json(&report));
    } else {
        if report.first {
            println!(
                "first audit of {}: epoch {} is trusted as shown, and the chain verified from it",
                report.server, report.from
            );
        }
        println!(
            "verified epochs {} to {} ({} append-only proofs): the log only grew",
            report.from, report.to, report.verified
        );
        println!("newest root: {}", report.root);
        println!("record: {}", report.record.display());
    }
    Ok(ExitCode::SUCCESS)
}
