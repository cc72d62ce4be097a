//! `sotto devices`: link a new device, approve one, remove one, list them.

use crate::output::{printable, to_json, utc};
use crate::passcode;
use clap::Subcommand;
use sotto_client::{Client, ClientError, InitOptions, KdfParams, Linking};
use std::io::{IsTerminal as _, Write as _};
use std::path::Path;
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum DevicesCommand {
    /// On a new device: ask to join your account. Shows a code (and a QR code) to approve
    /// on a device you already have, then waits for it (five minutes at most).
    Link(LinkArgs),
    /// On a device you have: approve the new device showing CODE. It gets your account,
    /// your contacts and (unless --no-history) your message history, and joins every
    /// conversation; everyone in them sees it.
    Approve {
        /// The code the new device shows.
        code: String,
        /// Do not send the message history.
        #[arg(long)]
        no_history: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a device from your account (from any other of your devices): it leaves every
    /// conversation, which everyone in them sees, and the server forgets it.
    Remove {
        /// The device's id (see `sotto devices list`).
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List your account's devices.
    List {
        /// Print JSON, one device per line.
        #[arg(long)]
        json: bool,
    },
}

/// `devices link`'s arguments.
#[derive(Debug, clap::Args)]
pub struct LinkArgs {
    /// Server URL, e.g. http://127.0.0.1:8787.
    #[arg(long)]
    server: String,
    /// Your username.
    #[arg(long)]
    user: String,
    /// This device's name, as your contacts will see it [default: this computer's name].
    #[arg(long)]
    name: Option<String>,
    /// Allow plain http:// to a server that is not on this machine (test networks only).
    #[arg(long)]
    insecure_http: bool,
    /// Print JSON: `{"code": ...}` first, then what the device received.
    #[arg(long)]
    json: bool,
}

/// This computer's name, as a device name: what the system calls it, if it says.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|n| n.trim().chars().take(64).collect::<String>())
        .filter(|n| sotto_proto::device_list::check_device_name(n).is_ok())
        .unwrap_or_else(|| "linked device".to_owned())
}

/// `devices link`: runs before there is an account on this device.
pub async fn link(home: &Path, args: LinkArgs) -> Result<ExitCode, ClientError> {
    let LinkArgs {
        server,
        user,
        name,
        insecure_http,
        json,
    } = args;
    let name = name.unwrap_or_else(host_name);
    let pass = passcode(true)?;
    // The witnesses come from the approving device, with the account's other settings.
    let options = InitOptions {
        kdf: KdfParams::from_env(),
        insecure_http,
        witnesses: None,
    };
    let linking = Linking::start(home, &server, &user, &name, &pass, options).await?;
    let code = linking.code();
    if json {
        println!(
            "{}",
            to_json(&serde_json::json!({ "code": code, "expires_at": linking.expires_at() }))
        );
    } else {
        println!("On a device of {user} you already have, run:");
        println!();
        println!("    sotto devices approve {code}");
        println!();
        match qrcode::QrCode::new(format!("{}{code}", sotto_proto::link::QR_PREFIX)) {
            Ok(qr) => println!(
                "{}",
                qr.render::<qrcode::render::unicode::Dense1x2>()
                    .quiet_zone(true)
                    .build()
            ),
            Err(e) => eprintln!("(no QR code: {e})"),
        }
        println!(
            "The code works once, until {} UTC. Waiting…",
            utc(linking.expires_at())
        );
    }
    std::io::stdout()
        .flush()
        .map_err(|e| ClientError::Usage(format!("stdout: {e}")))?;
    let (client, linked) = linking.wait().await?;
    // The conversations arrive as the approving device adds this one to each.
    let synced = client.sync().await;
    if json {
        println!("{}", to_json(&linked));
    } else {
        println!(
            "linked: this is device {} of {}, with {} contacts and {} history entries",
            linked.device, linked.user, linked.contacts, linked.history
        );
        if linked.history_left_out > 0 {
            println!(
                "({} older entries were left out: the history was larger than the server takes)",
                linked.history_left_out
            );
        }
        println!("conversations arrive as your other device adds this one; see `sotto recv`");
    }
    crate::report_security(&client, synced.map(|()| ExitCode::SUCCESS))
}

/// `devices approve` and `devices list`.
pub async fn run(client: &Client, command: DevicesCommand) -> Result<ExitCode, ClientError> {
    match command {
        DevicesCommand::Approve {
            code,
            no_history,
            json,
        } => {
            eprintln!(
                "Approve only a code shown on a new device you are holding yourself. Never \
                 approve a code someone sent you or read to you: it would give them your \
                 account, your contacts and your messages."
            );
            if std::io::stdin().is_terminal() {
                eprint!("Approve the device showing this code? Type yes: ");
                let mut answer = String::new();
                std::io::stdin()
                    .read_line(&mut answer)
                    .map_err(|e| ClientError::Usage(format!("stdin: {e}")))?;
                if answer.trim() != "yes" {
                    return Err(ClientError::Usage("not approved".into()));
                }
            }
            let approved = client.approve(&code, !no_history).await?;
            if json {
                println!("{}", to_json(&approved));
            } else {
                println!(
                    "approved {} ({}): added to {} conversations, {} history entries sent",
                    printable(&approved.name),
                    approved.device,
                    approved.conversations,
                    approved.history
                );
            }
            for (group, why) in &approved.failed {
                eprintln!("not added to conversation {group}: {}", printable(why));
            }
            // Linked, but not everywhere: the server (or the group) stood in the way.
            Ok(if approved.failed.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
        DevicesCommand::Remove { id, json } => {
            let removed = client.remove_device(&id).await?;
            if json {
                println!("{}", to_json(&removed));
            } else {
                println!(
                    "removed {} ({}): out of {} conversations; the server no longer serves it",
                    printable(&removed.name),
                    removed.device,
                    removed.conversations
                );
            }
            for (group, why) in &removed.failed {
                eprintln!("not removed from conversation {group}: {}", printable(why));
            }
            Ok(if removed.failed.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
        DevicesCommand::List { json } => {
            for d in client.devices().await? {
                if json {
                    println!("{}", to_json(&d));
                } else {
                    let this = if d.this { "\t(this device)" } else { "" };
                    let seen = match (d.on_server, d.last_seen) {
                        (Some(false), _) => "not on the server".to_owned(),
                        (None, _) => "last seen unknown (the server did not say)".to_owned(),
                        (Some(true), None) => "last seen never".to_owned(),
                        (Some(true), Some(t)) => format!("last seen {} UTC", utc(t)),
                    };
                    println!(
                        "{}\t{}\tadded {} UTC\t{seen}{this}",
                        d.id,
                        printable(&d.name),
                        utc(d.added_at)
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        DevicesCommand::Link(_) => Err(ClientError::Usage(
            "this device has an account already; `devices link` makes a new one, with --home"
                .into(),
        )),
    }
}
