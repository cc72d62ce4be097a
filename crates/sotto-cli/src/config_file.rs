//! `sotto server --config FILE`: the server's settings in a TOML file, with the same names as
//! its flags (`listen`, `data`, `database`, `ciphersuite`, `metrics_listen`, `nats`,
//! `behind_tls_proxy`, `trusted_proxy = [...]`, `witness = [...]`, `log_format`, `kt_epoch_ms`,
//! `kt_epoch_changes`, and a `[limit]` table of
//! `name = "value"`). A setting in the file replaces the built-in default; the environment
//! (`SOTTO_…`) and the command line each win over the file.

use std::path::Path;

/// The settings a file may hold, each a flag of `sotto server`.
const SCALARS: &[&str] = &[
    "listen",
    "data",
    "database",
    "ciphersuite",
    "metrics_listen",
    "nats",
    "behind_tls_proxy",
    "log_format",
    "kt_epoch_ms",
    "kt_epoch_changes",
];

/// The settings a file may hold as lists, each a repeatable flag of `sotto server`.
const LISTS: &[&str] = &["trusted_proxy", "witness"];

/// Reads `path` and makes its settings the defaults of the `server` subcommand of `command`.
pub fn apply(command: clap::Command, path: &Path) -> Result<clap::Command, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("--config {}: {e}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| format!("--config {}: {e}", path.display()))?;
    let mut defaults: Vec<(&'static str, Vec<String>)> = Vec::new();
    for (key, value) in &table {
        let bad = |what: &str| format!("--config {}: {key}: {what}", path.display());
        if let Some(&name) = SCALARS.iter().find(|&&n| n == key) {
            defaults.push((
                name,
                vec![scalar(value).ok_or_else(|| bad("expected a string, number or boolean"))?],
            ));
        } else if let Some(&name) = LISTS.iter().find(|&&n| n == key) {
            let list = value.as_array().ok_or_else(|| bad("expected a list"))?;
            let items = list
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| bad("expected a list of strings"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            defaults.push((name, items));
        } else if key == "limit" {
            let limits = value
                .as_table()
                .ok_or_else(|| bad("expected a table of name = \"value\""))?;
            let items = limits
                .iter()
                .map(|(name, v)| {
                    scalar(v)
                        .map(|v| format!("{name}={v}"))
                        .ok_or_else(|| bad("expected each limit as a string"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            defaults.push(("limit", items));
        } else {
            return Err(format!(
                "--config {}: unknown setting {key:?}; the settings are: {}, {}, limit",
                path.display(),
                SCALARS.join(", "),
                LISTS.join(", ")
            ));
        }
    }
    Ok(command.mut_subcommand("server", |server| {
        defaults.into_iter().fold(server, |server, (name, values)| {
            server.mut_arg(name, |arg| arg.default_values(values))
        })
    }))
}

/// A TOML value as the command line would spell it.
fn scalar(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(n) => Some(n.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}
