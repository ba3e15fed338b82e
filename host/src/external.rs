//! External subcommands, git-style: `fusion-host NAME ARGS...`, where NAME is none of the host's
//! own commands, runs the executable `fusion-host-NAME` found beside the host's executable (then
//! on PATH) with ARGS. Tools that need model code (`embed`, `bench`) live there, so the host
//! itself links none.
//!
//! The host's options given before NAME reach the command through the environment, as git and
//! cargo do for theirs: `--device` as `FUSION_DEVICE`, `--plugin-dir` prepended to
//! `FUSION_PLUGIN_PATH`, `--offline` as `HF_HUB_OFFLINE=1`, `-v`/`-q` as `FUSION_LOG` (unless
//! set); `FUSION_HOST` names the host's executable. Options that only mean something for a run
//! (`--config-name`, `--cfg`, `-m`, ...) are refused there.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::error::usage;

/// An external command found on the command line.
#[derive(Debug, PartialEq, Eq)]
pub struct External {
    /// The command's name (`embed` for `fusion-host-embed`).
    pub name: String,
    /// The host's options before the name, as given.
    pub host_args: Vec<String>,
    /// Everything after the name.
    pub args: Vec<String>,
}

/// Options of the host that an external command can take from the environment; any other host
/// option before an external command's name is an error.
const FORWARDED: &[&str] = &["device", "plugin_dir", "offline", "verbose", "quiet"];

/// If the first positional argument of `args` (the whole command line, program name first) is a
/// bare word that is neither one of `cmd`'s subcommands nor an override, the external command it
/// names. `None` leaves the command line to clap (which reports its own errors).
pub fn find(cmd: &clap::Command, args: &[String]) -> Option<External> {
    use clap::ArgAction;
    // Built, so that every argument (help and version too) has its number of values.
    let mut cmd = cmd.clone();
    cmd.build();
    let cmd = &cmd;
    let stop = |arg: &clap::Arg| {
        matches!(
            arg.get_action(),
            ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version
        )
    };
    let takes_value = |arg: &clap::Arg| arg.get_num_args().is_some_and(|n| n.takes_values());
    let mut i = 1;
    while i < args.len() {
        let a = &args[i];
        if a == "--" {
            return None;
        }
        if let Some(long) = a.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, _)) => (n, true),
                None => (long, false),
            };
            let arg = cmd.get_arguments().find(|x| x.get_long() == Some(name))?;
            if stop(arg) {
                return None;
            }
            i += if takes_value(arg) && !inline { 2 } else { 1 };
            continue;
        }
        if let Some(shorts) = a.strip_prefix('-').filter(|s| !s.is_empty()) {
            let mut skip = 1;
            for (pos, ch) in shorts.char_indices() {
                let arg = cmd.get_arguments().find(|x| x.get_short() == Some(ch))?;
                if stop(arg) {
                    return None;
                }
                if takes_value(arg) {
                    // `-c job` or `-cjob`.
                    if pos + ch.len_utf8() == shorts.len() {
                        skip = 2;
                    }
                    break;
                }
            }
            i += skip;
            continue;
        }
        // The first positional argument.
        let builtin = cmd
            .get_subcommands()
            .any(|s| s.get_name() == a || s.get_all_aliases().any(|al| al == a))
            || a == "help";
        let override_like = a.contains('=') || a.starts_with('~') || a.starts_with('+');
        let word = !a.is_empty()
            && a.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if builtin || override_like || !word {
            return None;
        }
        return Some(External {
            name: a.clone(),
            host_args: args[1..i].to_vec(),
            args: args[i + 1..].to_vec(),
        });
    }
    None
}

/// The executable for `name`: `fusion-host-NAME` beside `exe`, else the first on `path`.
pub fn locate(name: &str, exe: Option<&Path>, path: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    let file = format!("fusion-host-{name}{}", std::env::consts::EXE_SUFFIX);
    let beside = exe.and_then(Path::parent).map(|d| d.join(&file));
    let on_path = path
        .map(|p| {
            std::env::split_paths(p)
                .map(|d| d.join(&file))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    beside.into_iter().chain(on_path).find(|p| is_executable(p))
}

#[cfg(unix)]
fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(p: &Path) -> bool {
    p.is_file()
}

/// The environment an external command gets from the host options before its name, after
/// checking that each is one it can take. `matches` are those options as clap parsed them.
fn environment(
    cmd: &clap::Command,
    ext: &External,
    matches: &clap::ArgMatches,
) -> anyhow::Result<Vec<(&'static str, OsString)>> {
    use clap::parser::ValueSource;
    let given = |id: &str| matches.value_source(id) == Some(ValueSource::CommandLine);
    for arg in cmd.get_arguments() {
        let id = arg.get_id().as_str();
        if given(id) && !FORWARDED.contains(&id) {
            return Err(usage(format!(
                "`{}` is an external command (fusion-host-{}); the option --{} before it \
                 applies to runs only. Options for `{}` go after its name: fusion-host {} --help",
                ext.name,
                ext.name,
                id.replace('_', "-"),
                ext.name,
                ext.name
            )));
        }
    }
    let mut env: Vec<(&'static str, OsString)> = Vec::new();
    if given("device") {
        if let Some(d) = matches.get_one::<String>("device") {
            env.push(("FUSION_DEVICE", d.into()));
        }
    }
    if given("plugin_dir") {
        let mut dirs: Vec<PathBuf> = matches
            .get_many::<PathBuf>("plugin_dir")
            .map(|v| v.cloned().collect())
            .unwrap_or_default();
        if let Some(old) = std::env::var_os("FUSION_PLUGIN_PATH") {
            dirs.extend(std::env::split_paths(&old));
        }
        env.push(("FUSION_PLUGIN_PATH", std::env::join_paths(dirs)?));
    }
    if matches.get_flag("offline") {
        env.push(("HF_HUB_OFFLINE", "1".into()));
    }
    if std::env::var_os("FUSION_LOG").is_none() {
        // Only what -v/-q change: without them the command keeps its own default.
        let (quiet, verbosity) = (matches.get_flag("quiet"), matches.get_count("verbose"));
        if quiet || verbosity > 0 {
            env.push(("FUSION_LOG", fusion_log::level(verbosity, quiet).into()));
        }
    }
    if let Ok(exe) = std::env::current_exe() {
        env.push(("FUSION_HOST", exe.into()));
    }
    Ok(env)
}

/// Run the external command: on Unix the host's process becomes the command (its exit code,
/// signals and terminal are the command's own); elsewhere it is waited for.
pub fn run(cmd: clap::Command, ext: &External) -> anyhow::Result<std::process::ExitCode> {
    let exe = std::env::current_exe().ok();
    let Some(program) = locate(
        &ext.name,
        exe.as_deref(),
        std::env::var_os("PATH").as_deref(),
    ) else {
        let builtins: Vec<String> = cmd
            .get_subcommands()
            .map(|s| s.get_name().to_string())
            .collect();
        let beside = exe
            .as_deref()
            .and_then(Path::parent)
            .map(|d| d.display().to_string())
            .unwrap_or_else(|| "the executable's folder".into());
        return Err(usage(format!(
            "no such command `{0}`: it is not one of fusion-host's commands ({1}), and no \
             executable fusion-host-{0} was found in {beside} or on PATH. (Config overrides \
             look like key=value, +key=value or ~key.)",
            ext.name,
            builtins.join(", ")
        )));
    };
    let mut host = vec!["fusion-host".to_string()];
    host.extend(ext.host_args.iter().cloned());
    let matches = cmd
        .clone()
        .try_get_matches_from(host)
        .map_err(|e| usage(format!("before `{}`: {}", ext.name, e.to_string().trim())))?;
    let env = environment(&cmd, ext, &matches)?;
    let mut child = std::process::Command::new(&program);
    child.args(&ext.args).envs(env);
    hand_over(child, &program)
}

#[cfg(unix)]
fn hand_over(
    mut child: std::process::Command,
    program: &Path,
) -> anyhow::Result<std::process::ExitCode> {
    use std::os::unix::process::CommandExt as _;
    // Returns only if the program could not be started.
    let err = child.exec();
    Err(anyhow::Error::new(err).context(format!("starting {}", program.display())))
}

#[cfg(not(unix))]
fn hand_over(
    mut child: std::process::Command,
    program: &Path,
) -> anyhow::Result<std::process::ExitCode> {
    let status = child
        .status()
        .map_err(|e| anyhow::Error::new(e).context(format!("starting {}", program.display())))?;
    Ok(std::process::ExitCode::from(
        status.code().map_or(1, |c| c.clamp(0, 255) as u8),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    fn cmd() -> clap::Command {
        use clap::CommandFactory as _;
        crate::cli::Cli::command()
    }

    fn args(line: &str) -> Vec<String> {
        std::iter::once("fusion-host")
            .chain(line.split_whitespace())
            .map(String::from)
            .collect()
    }

    #[test]
    fn a_bare_word_after_the_host_options_is_an_external_command() {
        let ext = find(&cmd(), &args("--device cpu -v embed --model m --out o")).unwrap();
        assert_eq!(ext.name, "embed");
        assert_eq!(ext.host_args, ["--device", "cpu", "-v"]);
        assert_eq!(ext.args, ["--model", "m", "--out", "o"]);
        let ext = find(&cmd(), &args("--device=cpu bench all --quick")).unwrap();
        assert_eq!((ext.name.as_str(), ext.args.len()), ("bench", 2));
        // A value of an option is not the command, though it is a bare word.
        let ext = find(&cmd(), &args("--config-name fabric_model_fusion hello")).unwrap();
        assert_eq!(ext.name, "hello");
        let ext = find(&cmd(), &args("-c job bench")).unwrap();
        assert_eq!(ext.name, "bench");
    }

    #[test]
    fn builtins_overrides_and_unknown_options_stay_with_clap() {
        for line in [
            "plugins",
            "--device cpu devices",
            "report outputs/",
            "help",
            "method=dummy modelpool=x",
            "~method.x",
            "+a.b=1",
            "--cfg job method=dummy",
            "--bogus embed",
            "-m method.scaling_factor=0.1,0.3",
            "",
            "-- embed",
            "../x",
        ] {
            assert_eq!(find(&cmd(), &args(line)), None, "{line}");
        }
        // The parse that clap would do agrees on what is a builtin.
        assert!(crate::cli::Cli::try_parse_from(args("plugins")).is_ok());
    }

    fn env_for(line: &str) -> anyhow::Result<Vec<(&'static str, String)>> {
        let ext = find(&cmd(), &args(line)).unwrap();
        let mut host = vec!["fusion-host".to_string()];
        host.extend(ext.host_args.iter().cloned());
        let matches = cmd().try_get_matches_from(host).unwrap();
        Ok(environment(&cmd(), &ext, &matches)?
            .into_iter()
            .filter(|(k, _)| *k != "FUSION_HOST")
            .map(|(k, v)| (k, v.to_string_lossy().into_owned()))
            .collect())
    }

    #[test]
    fn host_options_reach_the_command_as_environment_and_run_options_are_refused() {
        let env = env_for("--device cpu --offline --plugin-dir /p bench all").unwrap();
        let get = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("FUSION_DEVICE"), Some("cpu"));
        assert_eq!(get("HF_HUB_OFFLINE"), Some("1"));
        assert!(get("FUSION_PLUGIN_PATH").is_some_and(|p| p.starts_with("/p")));
        if std::env::var_os("FUSION_LOG").is_none() {
            assert_eq!(
                env_for("-vv embed").unwrap(),
                [("FUSION_LOG", "trace".into())]
            );
            assert_eq!(
                env_for("-q embed").unwrap(),
                [("FUSION_LOG", "warn".into())]
            );
        }
        assert!(env_for("embed --device cpu").unwrap().is_empty());
        for (line, option) in [
            ("--config-name x embed", "--config-name"),
            ("-c job embed", "--cfg"),
            ("-m embed", "--multirun"),
        ] {
            let err = env_for(line).unwrap_err().to_string();
            assert!(
                err.contains(option) && err.contains("fusion-host-embed"),
                "{line}: {err}"
            );
        }
    }

    #[test]
    fn the_command_beside_the_host_wins_over_path() {
        let beside = tempfile::tempdir().unwrap();
        let on_path = tempfile::tempdir().unwrap();
        let write = |dir: &Path| {
            let p = dir.join("fusion-host-hello");
            std::fs::write(&p, "#!/bin/sh\n").unwrap();
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt as _;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
            p
        };
        let host = beside.path().join("fusion-host");
        let path = std::env::join_paths([on_path.path()]).unwrap();
        assert_eq!(locate("hello", Some(&host), Some(&path)), None);
        let second = write(on_path.path());
        assert_eq!(locate("hello", Some(&host), Some(&path)), Some(second));
        let first = write(beside.path());
        assert_eq!(locate("hello", Some(&host), Some(&path)), Some(first));
        assert_eq!(locate("other", Some(&host), Some(&path)), None);
    }
}
