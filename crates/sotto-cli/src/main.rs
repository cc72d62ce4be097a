//! `sotto`: the command-line client and server of the Sotto messenger.
//!
//! Argument parsing lives in [`Cli`]; each subcommand is a thin call into `sotto-client` or
//! `sotto-server`. Exit codes follow the CLI contract: 0 ok, 1 usage or user error, 2 server
//! unreachable or refused, 3 security failure, 4 locked or wrong passcode.
#![forbid(unsafe_code)]

mod server;

use clap::{Parser, Subcommand};
use sotto_client::{Client, ClientError, KdfParams, MessageView};
use sotto_proto::ErrorCode;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use zeroize::Zeroizing;

/// End-to-end encrypted messaging (MLS, RFC 9420) through a server you can run yourself.
#[derive(Debug, Parser)]
#[command(name = "sotto", version)]
struct Cli {
    /// Where this device's encrypted store lives [default: the platform data directory,
    /// e.g. ~/.local/share/sotto]
    #[arg(long, global = true, env = "SOTTO_HOME")]
    home: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a Sotto server.
    Server(server::ServerArgs),
    /// Create an account with this device as its first device.
    Init {
        /// Server URL, e.g. http://127.0.0.1:8787.
        #[arg(long)]
        server: String,
        /// Username: 3-32 of a-z 0-9 _ . -, starting with a letter.
        #[arg(long)]
        user: String,
    },
    /// Show this device's account, device id, server and identity key.
    Whoami {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Send a message to a user (one-to-one) or to a group.
    #[command(override_usage = "sotto send USER TEXT\n       sotto send --group NAME TEXT")]
    Send {
        /// The group to send to (then give only TEXT).
        #[arg(long)]
        group: Option<String>,
        /// USER TEXT, or TEXT with --group.
        #[arg(required = true, num_args = 1..=2, value_names = ["USER", "TEXT"])]
        args: Vec<String>,
    },
    /// Fetch, decrypt and print new messages and events.
    Recv {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// Keep running and print messages as they arrive.
        #[arg(long)]
        follow: bool,
        /// Without --follow: wait up to SECS for a first message. With --follow: stop after
        /// SECS.
        #[arg(long, value_name = "SECS")]
        timeout: Option<u64>,
    },
    /// Create and manage groups.
    #[command(subcommand)]
    Group(GroupCommand),
}

#[derive(Debug, Subcommand)]
enum GroupCommand {
    /// Create a group.
    Create {
        /// Its name.
        name: String,
        /// Users to add, comma separated.
        #[arg(long, value_delimiter = ',')]
        members: Vec<String>,
    },
    /// Add users to a group.
    Add {
        /// The group.
        name: String,
        /// Users to add.
        #[arg(required = true)]
        users: Vec<String>,
    },
    /// Remove users from a group.
    Remove {
        /// The group.
        name: String,
        /// Users to remove.
        #[arg(required = true)]
        users: Vec<String>,
    },
    /// List your groups.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List a group's members and their devices.
    Members {
        /// The group.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(exit_code(&e))
        }
    }
}

fn exit_code(e: &ClientError) -> u8 {
    match e {
        ClientError::Usage(_) | ClientError::Store(_) | ClientError::Engine(_) => 1,
        ClientError::Unreachable(_) => 2,
        ClientError::Refused(b) => match b.code {
            ErrorCode::UnknownUser | ErrorCode::UsernameTaken | ErrorCode::InvalidField => 1,
            _ => 2,
        },
        ClientError::Security(_) => 3,
        ClientError::Locked(_) => 4,
        _ => 1,
    }
}

fn default_home() -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("sotto")
}

fn passcode(confirm: bool) -> Result<Zeroizing<String>, ClientError> {
    if let Ok(p) = std::env::var("SOTTO_PASSCODE") {
        return Ok(Zeroizing::new(p));
    }
    let read = |prompt: &str| {
        rpassword::prompt_password(prompt)
            .map(Zeroizing::new)
            .map_err(|e| {
                ClientError::Locked(format!(
                    "cannot read the passcode: {e} (set SOTTO_PASSCODE for scripts)"
                ))
            })
    };
    let first = read("Passcode: ")?;
    if confirm && *read("Passcode again: ")? != *first {
        return Err(ClientError::Usage("the passcodes differ".into()));
    }
    Ok(first)
}

fn open(home: &Path) -> Result<Client, ClientError> {
    Client::open(home, &passcode(false)?)
}

async fn run(cli: Cli) -> Result<ExitCode, ClientError> {
    let home = cli.home.unwrap_or_else(default_home);
    match cli.command {
        Command::Server(args) => server::run(args).await,
        Command::Init { server, user } => {
            let pass = passcode(true)?;
            let client = Client::init(&home, &server, &user, &pass, KdfParams::from_env()).await?;
            let me = client.whoami();
            println!(
                "created account {} (device {}) on {}",
                me.user, me.device, me.server
            );
            println!("identity key: {}", me.identity_key);
            Ok(ExitCode::SUCCESS)
        }
        Command::Whoami { json } => {
            let me = open(&home)?.whoami();
            if json {
                println!("{}", to_json(&me));
            } else {
                println!("user:         {}", me.user);
                println!("device:       {}", me.device);
                println!("server:       {}", me.server);
                println!("ciphersuite:  0x{:04X}", me.ciphersuite);
                println!("identity key: {}", me.identity_key);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Send { group, args } => {
            let client = open(&home)?;
            let sent = match (group.as_deref(), args.as_slice()) {
                (Some(g), [text]) => client.send_group_text(g, text).await?,
                (None, [user, text]) => client.send_text(user, text).await?,
                (Some(_), _) => {
                    return Err(ClientError::Usage(
                        "with --group, give only the message text".into(),
                    ));
                }
                (None, _) => return Err(ClientError::Usage("usage: sotto send USER TEXT".into())),
            };
            eprintln!("sent (message {})", sent.id);
            Ok(ExitCode::SUCCESS)
        }
        Command::Recv {
            json,
            follow,
            timeout,
        } => {
            let client = open(&home)?;
            let deadline = timeout.map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
            let report = if follow || timeout.is_some() {
                client
                    .follow(deadline, !follow, |batch| print_messages(batch, json))
                    .await?
            } else {
                let report = client.sync().await?;
                let batch = client.unshown()?;
                print_messages(&batch, json)?;
                client.mark_shown(&batch)?;
                report
            };
            if report.security_failures.is_empty() {
                Ok(ExitCode::SUCCESS)
            } else {
                for f in &report.security_failures {
                    eprintln!("security: {f}");
                }
                Ok(ExitCode::from(3))
            }
        }
        Command::Group(cmd) => group(&home, cmd).await,
    }
}

async fn group(home: &Path, cmd: GroupCommand) -> Result<ExitCode, ClientError> {
    let client = open(home)?;
    let events = match cmd {
        GroupCommand::Create { name, members } => {
            let ev = client.create_group(&name, &members).await?;
            println!("created group {name}");
            ev
        }
        GroupCommand::Add { name, users } => client.add_members(&name, &users).await?,
        GroupCommand::Remove { name, users } => client.remove_members(&name, &users).await?,
        GroupCommand::List { json } => {
            let groups = client.groups()?;
            for g in groups {
                if json {
                    println!("{}", to_json(&g));
                } else {
                    let name = g.name.as_deref().unwrap_or("(name not received yet)");
                    let state = if g.active { "" } else { " (removed)" };
                    println!("{name}\t{} devices\tepoch {}{state}", g.devices, g.epoch);
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        GroupCommand::Members { name, json } => {
            for m in client.members(&name)? {
                if json {
                    println!("{}", to_json(&m));
                } else {
                    println!("{}\t{}", m.user, m.devices.join(","));
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
    };
    for e in events {
        println!("{e}");
    }
    Ok(ExitCode::SUCCESS)
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn print_messages(batch: &[MessageView], json: bool) -> Result<(), ClientError> {
    let mut out = std::io::stdout().lock();
    for m in batch {
        let line = if json {
            to_json(m)
        } else {
            let place = match (&m.group, &m.peer) {
                (Some(g), _) => format!("#{g} "),
                _ => String::new(),
            };
            let body = if m.kind == "event" {
                format!("* {}", m.text)
            } else {
                format!("{}: {}", m.from, m.text)
            };
            format!("[{}] {place}{body}", utc(m.sent_at))
        };
        writeln!(out, "{line}").map_err(|e| ClientError::Usage(format!("stdout: {e}")))?;
    }
    out.flush()
        .map_err(|e| ClientError::Usage(format!("stdout: {e}")))
}

/// `YYYY-MM-DD HH:MM` in UTC (civil-from-days, H. Hinnant's algorithm).
fn utc(ts: u64) -> String {
    let days = (ts / 86_400) as i64;
    let secs = ts % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}",
        secs / 3600,
        (secs % 3600) / 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory as _;
        super::Cli::command().debug_assert();
    }

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(super::utc(0), "1970-01-01 00:00");
        assert_eq!(super::utc(951_782_400), "2000-02-29 00:00");
        assert_eq!(super::utc(1_795_790_000), "2026-11-27 14:33");
        assert_eq!(super::utc(4_102_444_799), "2099-12-31 23:59");
    }
}
