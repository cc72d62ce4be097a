//! `sotto`: the command-line client and server of the Sotto messenger.
//!
//! Argument parsing lives in [`Cli`]; each subcommand is a thin call into `sotto-client` or
//! `sotto-server`. Exit codes follow the CLI contract: 0 ok, 1 usage or user error, 2 server
//! unreachable or refused, 3 security failure, 4 locked or wrong passcode, 5 local store
//! damaged or internal error.
#![forbid(unsafe_code)]

mod config_file;
mod devices;
mod log;
mod output;
mod server;

use output::{print_messages, printable, to_json};

use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use sotto_client::{
    Client, ClientError, ContactView, FollowStatus, InitOptions, KdfParams, MessageKind,
    MessageView, VerifyAction,
};
use sotto_proto::ErrorCode;
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
    /// Witness a server's key-transparency log: cosign each epoch once its append-only proof
    /// from the last one cosigned verifies (no account needed).
    Witness(log::WitnessArgs),
    /// Verify a server's key-transparency log from the last epoch seen to the newest, and
    /// keep a record of its roots (no account needed).
    Audit(log::AuditArgs),
    /// Create an account with this device as its first device.
    Init {
        /// Server URL, e.g. http://127.0.0.1:8787.
        #[arg(long)]
        server: String,
        /// Username: 3-32 of a-z 0-9 _ . -, starting with a letter.
        #[arg(long)]
        user: String,
        /// Allow plain http:// to a server that is not on this machine. For test networks
        /// only: everything, sign-in included, then crosses the network without TLS.
        #[arg(long)]
        insecure_http: bool,
        /// A witness whose cosignature every key-transparency root must carry: its C2SP
        /// verifier key, as `sotto witness` prints it (repeatable).
        #[arg(long, value_name = "VKEY")]
        witness: Vec<String>,
        /// How many of the --witness keys must have cosigned a root (default: all).
        #[arg(long, value_name = "K")]
        witness_threshold: Option<usize>,
        /// How old a witness's newest cosignature may be, in seconds (default 600).
        #[arg(long, value_name = "SECONDS", default_value_t = sotto_client::WITNESS_MAX_AGE)]
        witness_max_age: u64,
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
    /// Link a new device to your account, approve one, list them.
    #[command(subcommand)]
    Devices(devices::DevicesCommand),
    /// Check a contact's keys now and show your safety number with them (digits and a QR
    /// code) and the key-transparency epoch; confirm it, or accept their new identity key.
    Verify {
        /// The contact.
        user: String,
        /// Mark the contact verified: the safety number you compared with them, in person
        /// or over a channel you trust (spaces allowed).
        #[arg(long, value_name = "NUMBER", conflicts_with = "accept")]
        confirm: Option<String>,
        /// Trust the contact's new identity key, after you checked with them that it is
        /// theirs. The contact is then no longer verified.
        #[arg(long)]
        accept: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
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

/// The command line, with `sotto server --config FILE`'s settings as the server's defaults.
fn parse() -> Result<Cli, clap::Error> {
    let cli = Cli::try_parse()?;
    let Command::Server(server::ServerArgs {
        config: Some(file), ..
    }) = &cli.command
    else {
        return Ok(cli);
    };
    let command = config_file::apply(Cli::command(), file)
        .map_err(|e| Cli::command().error(clap::error::ErrorKind::InvalidValue, e))?;
    Cli::from_arg_matches(&command.try_get_matches()?)
}

fn main() -> ExitCode {
    let cli = match parse() {
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
            eprintln!("error: {}", printable(&e.to_string()));
            ExitCode::from(exit_code(&e))
        }
    }
}

fn exit_code(e: &ClientError) -> u8 {
    match e {
        ClientError::Usage(_) => 1,
        ClientError::Store(_) | ClientError::Engine(_) | ClientError::Internal(_) => 5,
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
        Command::Witness(args) => log::witness(args).await,
        Command::Audit(args) => log::run_audit(args).await,
        Command::Init {
            server,
            user,
            insecure_http,
            witness,
            witness_threshold,
            witness_max_age,
        } => {
            let witnesses =
                sotto_client::WitnessPolicy::new(&witness, witness_threshold, witness_max_age)?;
            let pass = passcode(true)?;
            let options = InitOptions {
                kdf: KdfParams::from_env(),
                insecure_http,
                witnesses,
            };
            let client = Client::init(&home, &server, &user, &pass, options).await?;
            let me = client.whoami();
            println!(
                "created account {} (device {}) on {}",
                me.user, me.device, me.server
            );
            println!("identity key: {}", me.identity_key);
            Ok(ExitCode::SUCCESS)
        }
        Command::Recv {
            json,
            follow,
            timeout,
        } => {
            let client = open(&home)?;
            recv(&client, json, follow, timeout).await
        }
        Command::Devices(devices::DevicesCommand::Link(args)) => devices::link(&home, args).await,
        command => {
            let client = open(&home)?;
            let result = client_command(&client, command).await;
            report_security(&client, result)
        }
    }
}

/// Ends a command other than `recv`: security events `recv` has not shown yet are printed,
/// and make the exit code 3, until `recv` shows them.
fn report_security(
    client: &Client,
    result: Result<ExitCode, ClientError>,
) -> Result<ExitCode, ClientError> {
    let unseen = client.unseen_security_events()?;
    for event in &unseen {
        eprintln!("security: {}", printable(&event.text));
    }
    if unseen.is_empty() {
        return result;
    }
    match result {
        // A security failure that ended the command is among the events just printed.
        Err(ClientError::Security(_)) | Ok(_) => {}
        Err(e) => eprintln!("error: {}", printable(&e.to_string())),
    }
    eprintln!("run `sotto recv` to see these security events in their conversations");
    Ok(ExitCode::from(3))
}

async fn client_command(client: &Client, command: Command) -> Result<ExitCode, ClientError> {
    match command {
        Command::Whoami { json } => {
            let me = client.whoami();
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
        Command::Group(cmd) => group(client, cmd).await,
        Command::Devices(cmd) => devices::run(client, cmd).await,
        Command::Verify {
            user,
            confirm,
            accept,
            json,
        } => {
            let action = match (&confirm, accept) {
                (Some(number), _) => VerifyAction::Confirm(number),
                (None, true) => VerifyAction::Accept,
                (None, false) => VerifyAction::Show,
            };
            let contact = client.verify(&user, action).await?;
            if json {
                println!("{}", to_json(&contact));
            } else {
                print_contact(&contact, action);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Server(_)
        | Command::Witness(_)
        | Command::Audit(_)
        | Command::Init { .. }
        | Command::Recv { .. } => Err(ClientError::Usage(
            "this command does not run on an account".into(),
        )),
    }
}

/// `recv`: prints what is new, security events included; exits 3 if it showed any.
async fn recv(
    client: &Client,
    json: bool,
    follow: bool,
    timeout: Option<u64>,
) -> Result<ExitCode, ClientError> {
    let mut saw_security = false;
    let mut print = |batch: &[MessageView]| {
        saw_security |= batch.iter().any(|m| m.kind == MessageKind::Security);
        print_messages(batch, json)
    };
    if follow || timeout.is_some() {
        let deadline = timeout.map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
        let server = client.whoami().server;
        let status = |s: &FollowStatus| match s {
            FollowStatus::Listening => {
                eprintln!("waiting for new messages (connected to {server})");
            }
            FollowStatus::Polling => {
                eprintln!("no push connection; checking for new messages every few seconds");
            }
            FollowStatus::Reconnecting => {
                eprintln!("lost the connection to the server; reconnecting");
            }
            FollowStatus::Unreachable(e) => {
                let e = printable(e);
                eprintln!("cannot reach the server ({e}); trying again every few seconds");
            }
            _ => {}
        };
        client.follow(deadline, !follow, &mut print, status).await?;
    } else {
        // What is stored is shown even if the sync fails: a security event it met included.
        let synced = client.sync().await;
        let batch = client.unshown()?;
        print(&batch)?;
        client.mark_shown(&batch)?;
        synced?;
    }
    Ok(if saw_security {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}

async fn group(client: &Client, cmd: GroupCommand) -> Result<ExitCode, ClientError> {
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
                    let name = g
                        .name
                        .as_deref()
                        .map_or("(name not received yet)".into(), printable);
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

/// Prints what `sotto verify` found, for a person.
fn print_contact(contact: &ContactView, action: VerifyAction<'_>) {
    let user = &contact.user;
    match action {
        VerifyAction::Confirm(_) => println!("{user} is verified: your safety numbers match."),
        VerifyAction::Accept => println!(
            "the new identity key of {user} is trusted now; compare safety numbers with them again"
        ),
        VerifyAction::Show => {}
    }
    println!("safety number with {user}:");
    let grouped = sotto_client::safety::grouped(&contact.safety_number);
    let groups: Vec<&str> = grouped.split(' ').collect();
    for line in groups.chunks(6) {
        println!("  {}", line.join(" "));
    }
    match qrcode::QrCode::new(format!("sotto-safety-v1:{}", contact.safety_number)) {
        Ok(code) => println!(
            "{}",
            code.render::<qrcode::render::unicode::Dense1x2>()
                .quiet_zone(true)
                .build()
        ),
        Err(e) => eprintln!("(no QR code: {e})"),
    }
    if contact.verified {
        println!("verified: yes");
    } else {
        println!(
            "verified: no (compare the number with {user} in person or over a channel you trust, \
             then run `sotto verify {user} --confirm NUMBER`)"
        );
    }
    println!(
        "key transparency: the devices of {user} are in the server's log (checked now, epoch {})",
        contact.kt_epoch
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory as _;
        super::Cli::command().debug_assert();
    }
}
