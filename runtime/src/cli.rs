//! The `strata` command line: clap definitions and the dispatch to
//! [`crate::commands`]. `main.rs` only parses and exits.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Run containers on Strata's FUSE union filesystem.
#[derive(Debug, Parser)]
#[command(name = "strata", version, about, propagate_version = true)]
pub struct Cli {
    /// The store directory (default /var/lib/strata; for an ordinary user
    /// $XDG_DATA_HOME/strata, i.e. ~/.local/share/strata).
    #[arg(long, global = true, env = "STRATA_ROOT", value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List images.
    Images(ImagesArgs),
    /// Make an image from a root filesystem tarball.
    Import(ImportArgs),
    /// Load images from a docker-archive or OCI archive.
    Load(LoadArgs),
    /// Save images to an archive.
    Save(SaveArgs),
    /// Give an image another name.
    Tag {
        /// The image.
        source: String,
        /// The new NAME[:TAG].
        target: String,
    },
    /// Remove images.
    Rmi {
        /// Remove even when tagged several times or used by containers.
        #[arg(short, long)]
        force: bool,
        /// The images.
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Show the history of an image.
    History(HistoryArgs),
    /// Show details of containers or images, as JSON.
    Inspect(InspectArgs),
    /// Create a container without starting it.
    Create(RunArgs),
    /// Start containers.
    Start(StartArgs),
    /// Create and start a container.
    Run(RunArgs),
    /// Memory, CPU and processes of running containers (from their
    /// cgroups).
    Stats(StatsArgs),
    /// List a container's port mappings, or the host side of one.
    Port {
        /// The container.
        container: String,
        /// PORT[/tcp|udp] in the container.
        port: Option<String>,
    },
    /// List containers.
    Ps(PsArgs),
    /// Stop containers: the stop signal, then SIGKILL after a grace time.
    Stop {
        /// Seconds to wait before SIGKILL.
        #[arg(short, long, default_value_t = 10)]
        time: u64,
        /// The containers.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Send a signal to containers (default SIGKILL).
    Kill {
        /// The signal (name or number).
        #[arg(short, long, default_value = "KILL")]
        signal: String,
        /// The containers.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Stop and start containers.
    Restart {
        /// Seconds to wait before SIGKILL.
        #[arg(short, long, default_value_t = 10)]
        time: u64,
        /// The containers.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Remove containers.
    Rm {
        /// Kill a running container first.
        #[arg(short, long)]
        force: bool,
        /// The containers.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Show the output of a detached container.
    Logs {
        /// Keep following the output.
        #[arg(short, long)]
        follow: bool,
        /// The container.
        container: String,
    },
    /// Run a command in a running container.
    Exec(ExecArgs),
    /// Follow a detached container's output until it exits, and exit with
    /// its code.
    Attach {
        /// The container.
        container: String,
    },
    /// Run a command in the rootless namespace (as root there, with the
    /// user's subordinate ids mapped), as `podman unshare` does; default
    /// `$SHELL`. As root: runs the command as is.
    #[command(trailing_var_arg = true)]
    Unshare {
        /// The command and its arguments.
        #[arg(allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Show the files a container changed (A added, C changed, D deleted).
    Diff {
        /// The container.
        container: String,
    },
    /// Make an image from a container's changes.
    Commit(CommitArgs),
    /// Write a container's filesystem as a tar archive.
    Export {
        /// The output file (default stdout).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// The container.
        container: String,
    },
    /// Copy files between a container and the host (CONTAINER:PATH).
    Cp {
        /// Source: host path or CONTAINER:PATH.
        src: String,
        /// Destination: host path or CONTAINER:PATH.
        dst: String,
    },
    /// Mount a container's filesystem and print where.
    Mount {
        /// The container.
        container: String,
    },
    /// Unmount a container mounted with `strata mount`.
    #[command(alias = "unmount")]
    Umount {
        /// The container.
        container: String,
    },
    /// Build an image from a Containerfile or Dockerfile.
    Build(BuildArgs),
    /// Pull an image from a registry.
    Pull(PullArgs),
    /// Push an image to a registry.
    Push(PushArgs),
    /// Log in to a registry (credentials go to podman's auth.json).
    Login(LoginArgs),
    /// Log out of a registry.
    Logout {
        /// The registry.
        registry: String,
    },
    /// Image commands.
    #[command(subcommand)]
    Image(ImageCommand),
    /// System commands.
    #[command(subcommand)]
    System(SystemCommand),
    /// (internal) supervise a container.
    #[command(name = "__supervise", hide = true)]
    Supervise(SuperviseArgs),
    /// (internal) serve a mount until it is unmounted.
    #[command(name = "__serve-mount", hide = true)]
    ServeMount(ServeMountArgs),
}

/// `strata image ...`.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Mount an image's layers read-only and print where.
    Mount {
        /// The image.
        image: String,
        /// The mountpoint (default under the store).
        dir: Option<PathBuf>,
    },
    /// Unmount an image mounted with `strata image mount`.
    #[command(alias = "umount")]
    Unmount {
        /// The image or the mountpoint.
        target: String,
    },
    /// List images (as `strata images`).
    #[command(alias = "list")]
    Ls(ImagesArgs),
    /// Remove images (as `strata rmi`).
    Rm {
        /// Force.
        #[arg(short, long)]
        force: bool,
        /// The images.
        #[arg(required = true)]
        images: Vec<String>,
    },
}

/// `strata system ...`.
#[derive(Debug, Subcommand)]
pub enum SystemCommand {
    /// Show disk usage.
    Df,
    /// Remove stopped containers and unused images.
    Prune {
        /// Do not ask.
        #[arg(short, long)]
        force: bool,
        /// Remove every image no container uses, not only untagged ones.
        #[arg(short, long)]
        all: bool,
    },
    /// Check the store (re-hash layers), containers and mounts.
    Check {
        /// Repair what can be repaired.
        #[arg(short, long)]
        repair: bool,
    },
}

/// `strata history`.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Do not truncate the output.
    #[arg(long)]
    pub no_trunc: bool,
    /// Print the IDs only.
    #[arg(short, long)]
    pub quiet: bool,
    /// The image.
    pub image: String,
}

/// `strata inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Format with a template (`{{.State.Status}}`) or `json`.
    #[arg(short, long)]
    pub format: Option<String>,
    /// Only look at `container`s or `image`s.
    #[arg(long = "type", value_enum)]
    pub kind: Option<ObjectKind>,
    /// Containers or images.
    #[arg(required = true)]
    pub names: Vec<String>,
}

/// `strata start`.
#[derive(Debug, Args)]
pub struct StartArgs {
    /// Attach stdout/stderr and pass the exit code through.
    #[arg(short, long)]
    pub attach: bool,
    /// Attach stdin.
    #[arg(short, long)]
    pub interactive: bool,
    /// The containers.
    #[arg(required = true)]
    pub containers: Vec<String>,
}

/// `strata stats`.
#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Show all containers (default: running only).
    #[arg(short, long)]
    pub all: bool,
    /// Print one table and exit.
    #[arg(long)]
    pub no_stream: bool,
    /// The containers (default: all running).
    pub containers: Vec<String>,
}

/// `strata ps`.
#[derive(Debug, Args)]
pub struct PsArgs {
    /// Show all containers (default: running only).
    #[arg(short, long)]
    pub all: bool,
    /// Print the IDs only.
    #[arg(short, long)]
    pub quiet: bool,
    /// Do not truncate the output.
    #[arg(long)]
    pub no_trunc: bool,
    /// `json` or a template (`{{.ID}} {{.Status}}`).
    #[arg(long)]
    pub format: Option<String>,
}

/// `strata commit`.
#[derive(Debug, Args)]
pub struct CommitArgs {
    /// The commit message.
    #[arg(short, long)]
    pub message: Option<String>,
    /// The author.
    #[arg(short, long)]
    pub author: Option<String>,
    /// A Dockerfile instruction to apply (CMD, ENV, ...).
    #[arg(short, long)]
    pub change: Vec<String>,
    /// Pause a running container while committing.
    #[arg(short, long, default_value_t = true, action = clap::ArgAction::Set)]
    pub pause: bool,
    /// The container.
    pub container: String,
    /// The new image's NAME[:TAG].
    pub name: Option<String>,
}

/// `strata __supervise`.
#[derive(Debug, Args)]
pub struct SuperviseArgs {
    /// Report readiness on stdout and log to ctr.log.
    #[arg(long)]
    pub detach: bool,
    /// The container ID.
    pub id: String,
}

/// `strata __serve-mount`.
#[derive(Debug, Args)]
pub struct ServeMountArgs {
    /// Lower layers, top first.
    #[arg(long = "lower")]
    pub lowers: Vec<PathBuf>,
    /// Upper layer.
    #[arg(long, requires = "work")]
    pub upper: Option<PathBuf>,
    /// Work directory.
    #[arg(long)]
    pub work: Option<PathBuf>,
    /// Mountpoint.
    pub dir: PathBuf,
}

/// `inspect --type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ObjectKind {
    /// A container.
    Container,
    /// An image.
    Image,
}

/// `save --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SaveFormatArg {
    /// docker's `docker save` tar.
    DockerArchive,
    /// An OCI image layout in a tar.
    OciArchive,
    /// An OCI image layout in a directory (`-o DIR`).
    OciDir,
}

/// `push --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PushFormat {
    /// An OCI image manifest.
    Oci,
    /// A Docker image manifest, schema 2 (also `docker`).
    #[value(alias = "docker")]
    V2s2,
}

/// `push --compression-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PushCompression {
    /// gzip, as every registry takes.
    Gzip,
    /// zstd.
    Zstd,
}

/// `strata images`.
#[derive(Debug, Args)]
pub struct ImagesArgs {
    /// Only images named REPOSITORY[:TAG] (a glob, as `--filter reference=`).
    #[arg(value_name = "REPOSITORY[:TAG]")]
    pub reference: Option<String>,
    /// Print the IDs only.
    #[arg(short, long)]
    pub quiet: bool,
    /// Show all images (intermediate ones too).
    #[arg(short, long)]
    pub all: bool,
    /// Do not truncate IDs.
    #[arg(long)]
    pub no_trunc: bool,
    /// Show repo digests.
    #[arg(long)]
    pub digests: bool,
    /// `reference=PATTERN`, `dangling=true|false`, `before=IMAGE`,
    /// `since=IMAGE` or `label=KEY[=VALUE]`; repeat to combine.
    #[arg(short, long, value_name = "KEY=VALUE")]
    pub filter: Vec<ImageFilter>,
    /// `json`, `table TEMPLATE` or a template (`{{.Repository}}:{{.Tag}}`).
    #[arg(long)]
    pub format: Option<OutputFormat>,
}

/// The keys `images --filter` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ImageFilterKey {
    /// A glob over the image's names.
    Reference,
    /// Untagged images (`true`) or tagged ones (`false`).
    Dangling,
    /// Images created before this one.
    Before,
    /// Images created after this one.
    Since,
    /// Images with this label (and value).
    Label,
}

/// One `images --filter KEY=VALUE`, as docker and podman take them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageFilter {
    /// `reference=PATTERN`: some name matches the glob (`*` within one
    /// path component), with or without its registry.
    Reference(String),
    /// `dangling=true|false`.
    Dangling(bool),
    /// `before=IMAGE`.
    Before(String),
    /// `since=IMAGE`.
    Since(String),
    /// `label=KEY` or `label=KEY=VALUE`.
    Label(String, Option<String>),
}

/// An `images --filter` that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// No `=`.
    #[error("{0:?} is not KEY=VALUE (as reference=busybox)")]
    NotKeyValue(String),
    /// A key `images` does not filter by.
    #[error("unknown filter {0:?}: use reference, dangling, before, since or label")]
    UnknownKey(String),
    /// `KEY=` with nothing after.
    #[error("filter {0} needs a value")]
    NoValue(String),
    /// `dangling=` with neither true nor false.
    #[error("dangling={0}: use true or false")]
    NotBool(String),
}

impl std::str::FromStr for ImageFilter {
    type Err = FilterError;

    fn from_str(s: &str) -> Result<Self, FilterError> {
        use clap::ValueEnum;
        let (k, v) = s
            .split_once('=')
            .ok_or_else(|| FilterError::NotKeyValue(s.to_string()))?;
        let key = ImageFilterKey::from_str(k, true)
            .map_err(|_| FilterError::UnknownKey(k.to_string()))?;
        if v.is_empty() {
            return Err(FilterError::NoValue(k.to_string()));
        }
        Ok(match key {
            ImageFilterKey::Reference => ImageFilter::Reference(v.into()),
            ImageFilterKey::Dangling => ImageFilter::Dangling(match v {
                "true" | "1" => true,
                "false" | "0" => false,
                _ => return Err(FilterError::NotBool(v.to_string())),
            }),
            ImageFilterKey::Before => ImageFilter::Before(v.into()),
            ImageFilterKey::Since => ImageFilter::Since(v.into()),
            ImageFilterKey::Label => match v.split_once('=') {
                Some((k, v)) => ImageFilter::Label(k.into(), Some(v.into())),
                None => ImageFilter::Label(v.into(), None),
            },
        })
    }
}

/// How a listing is printed (`--format`), as podman takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputFormat {
    /// `json`: one JSON array.
    Json,
    /// `table TEMPLATE`: a header row, then one row per item, cells
    /// (split at tabs) aligned.
    Table(String),
    /// A template expanded once per item.
    Template(String),
}

impl std::str::FromStr for OutputFormat {
    type Err = std::convert::Infallible;

    /// Any text is a template; `json` and `table [TEMPLATE]` are special.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.trim() {
            "json" => OutputFormat::Json,
            "table" => OutputFormat::Table(String::new()),
            t => match t.strip_prefix("table ") {
                Some(rest) => OutputFormat::Table(rest.to_string()),
                None => OutputFormat::Template(s.to_string()),
            },
        })
    }
}

/// `strata pull`.
#[derive(Debug, Args)]
pub struct PullArgs {
    /// OS/ARCH[/VARIANT] to pick from a multi-platform image.
    #[arg(long)]
    pub platform: Option<String>,
    /// Check TLS certificates (false: also allow plain HTTP).
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub tls_verify: bool,
    /// Print only the image ID.
    #[arg(short, long)]
    pub quiet: bool,
    /// REGISTRY/NAME[:TAG|@sha256:DIGEST]
    pub image: String,
}

/// `strata push`.
#[derive(Debug, Args)]
pub struct PushArgs {
    /// Check TLS certificates (false: also allow plain HTTP).
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub tls_verify: bool,
    /// Manifest format: oci or v2s2.
    #[arg(long, value_enum, default_value_t = PushFormat::Oci)]
    pub format: PushFormat,
    /// Layer compression: gzip or zstd.
    #[arg(long, value_enum, default_value_t = PushCompression::Gzip)]
    pub compression_format: PushCompression,
    /// Print nothing but errors.
    #[arg(short, long)]
    pub quiet: bool,
    /// Write the pushed manifest's digest to this file.
    #[arg(long)]
    pub digestfile: Option<PathBuf>,
    /// The local image.
    pub image: String,
    /// REGISTRY/NAME[:TAG] (default: the image's name).
    pub destination: Option<String>,
}

/// `strata login`.
#[derive(Debug, Args)]
pub struct LoginArgs {
    /// The user name.
    #[arg(short, long)]
    pub username: Option<String>,
    /// The password (prefer --password-stdin).
    #[arg(short, long)]
    pub password: Option<String>,
    /// Read the password from stdin.
    #[arg(long)]
    pub password_stdin: bool,
    /// The auth file to write (default $REGISTRY_AUTH_FILE or podman's).
    #[arg(long)]
    pub authfile: Option<PathBuf>,
    /// Check TLS certificates (false: also allow plain HTTP).
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub tls_verify: bool,
    /// The registry.
    pub registry: String,
}

/// `strata import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// A Dockerfile instruction to apply (CMD, ENV, ...).
    #[arg(short, long)]
    pub change: Vec<String>,
    /// The history comment.
    #[arg(short, long)]
    pub message: Option<String>,
    /// The tarball, or `-` for stdin.
    pub file: String,
    /// NAME[:TAG] for the image.
    pub name: Option<String>,
}

/// `strata load`.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// The archive (default stdin).
    #[arg(short, long)]
    pub input: Option<PathBuf>,
    /// Print nothing.
    #[arg(short, long)]
    pub quiet: bool,
}

/// `strata save`.
#[derive(Debug, Args)]
pub struct SaveArgs {
    /// The output file (or directory for oci-dir); default stdout.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// docker-archive, oci-archive or oci-dir.
    #[arg(long, value_enum, default_value_t = SaveFormatArg::DockerArchive)]
    pub format: SaveFormatArg,
    /// The images.
    #[arg(required = true)]
    pub images: Vec<String>,
}

/// `strata create` and `strata run`.
#[derive(Debug, Args, Clone)]
pub struct RunArgs {
    /// Run in the background and print the container ID.
    #[arg(short, long)]
    pub detach: bool,
    /// Keep stdin open.
    #[arg(short, long)]
    pub interactive: bool,
    /// Give the container a terminal.
    #[arg(short, long)]
    pub tty: bool,
    /// Remove the container when it exits.
    #[arg(long)]
    pub rm: bool,
    /// The container's name.
    #[arg(long)]
    pub name: Option<String>,
    /// Set an environment variable (KEY=VALUE, or KEY to copy the host's).
    #[arg(short, long)]
    pub env: Vec<String>,
    /// Read environment variables from a file.
    #[arg(long)]
    pub env_file: Vec<PathBuf>,
    /// The working directory.
    #[arg(short, long)]
    pub workdir: Option<String>,
    /// USER[:GROUP] to run as.
    #[arg(short, long)]
    pub user: Option<String>,
    /// The hostname.
    #[arg(long)]
    pub hostname: Option<String>,
    /// Override the image's entrypoint.
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Bind-mount HOST:CONTAINER[:ro].
    #[arg(short, long)]
    pub volume: Vec<String>,
    /// pasta (default: a namespace of its own with user-mode networking),
    /// slirp4netns, none (loopback only) or host; MODE:OPTIONS as podman
    /// (pasta:--map-gw, slirp4netns:allow_host_loopback=true).
    #[arg(long, alias = "net")]
    pub network: Option<String>,
    /// Publish a port: [IP:][HOST_PORT:]CONTAINER_PORT[/tcp|udp] (repeatable).
    #[arg(short = 'p', long = "publish")]
    pub publish: Vec<String>,
    /// Every capability, no seccomp filter, no masked paths, all devices.
    #[arg(long)]
    pub privileged: bool,
    /// Add a capability (NET_ADMIN, or ALL).
    #[arg(long)]
    pub cap_add: Vec<String>,
    /// Drop a capability (CHOWN, or ALL).
    #[arg(long)]
    pub cap_drop: Vec<String>,
    /// seccomp=unconfined, seccomp=PROFILE.json, no-new-privileges.
    #[arg(long)]
    pub security_opt: Vec<String>,
    /// Memory limit (64m, 1g).
    #[arg(short, long)]
    pub memory: Option<String>,
    /// Memory plus swap limit (-1: unlimited swap).
    #[arg(long)]
    pub memory_swap: Option<String>,
    /// Number of CPUs (1.5).
    #[arg(long)]
    pub cpus: Option<String>,
    /// CPU shares (relative weight).
    #[arg(short = 'c', long)]
    pub cpu_shares: Option<u64>,
    /// Most processes in the container (-1: unlimited).
    #[arg(long, allow_hyphen_values = true)]
    pub pids_limit: Option<i64>,
    /// IMAGE [COMMAND [ARG...]]
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "IMAGE [COMMAND [ARG...]]"
    )]
    pub args: Vec<String>,
}

/// `strata build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The Containerfile (`-` for stdin; default Containerfile or
    /// Dockerfile in the context).
    #[arg(short, long)]
    pub file: Option<PathBuf>,
    /// NAME[:TAG] for the image (repeatable).
    #[arg(short, long)]
    pub tag: Vec<String>,
    /// Set a build argument (KEY=VALUE, or KEY to copy the host's).
    #[arg(long)]
    pub build_arg: Vec<String>,
    /// Build this stage (and what it needs), not the last one.
    #[arg(long)]
    pub target: Option<String>,
    /// Do not use the layer cache.
    #[arg(long)]
    pub no_cache: bool,
    /// Write the image ID to this file.
    #[arg(long)]
    pub iidfile: Option<PathBuf>,
    /// Print only the image ID.
    #[arg(short, long)]
    pub quiet: bool,
    /// The network of RUN steps: none (default: loopback only) or host.
    #[arg(long)]
    pub network: Option<String>,
    /// The build context directory.
    pub context: PathBuf,
}

/// `strata exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Keep stdin open.
    #[arg(short, long)]
    pub interactive: bool,
    /// Give the command a terminal.
    #[arg(short, long)]
    pub tty: bool,
    /// Run in the background.
    #[arg(short, long)]
    pub detach: bool,
    /// Set an environment variable.
    #[arg(short, long)]
    pub env: Vec<String>,
    /// The working directory.
    #[arg(short, long)]
    pub workdir: Option<String>,
    /// USER[:GROUP] to run as.
    #[arg(short, long)]
    pub user: Option<String>,
    /// CONTAINER COMMAND [ARG...]
    #[arg(required = true, num_args = 2.., trailing_var_arg = true, allow_hyphen_values = true, value_name = "CONTAINER COMMAND [ARG...]")]
    pub args: Vec<String>,
}

/// Parses the command line and runs it; returns the process exit code.
/// Errors are printed as `Error: ...` on stderr.
pub fn main() -> i32 {
    crate::sys::default_sigpipe();
    // `STRATA_LOG=debug` (or any tracing filter): the logs of strata and
    // the libraries it runs (libcontainer), on stderr.
    if let Some(filter) = std::env::var_os("STRATA_LOG").filter(|v| !v.is_empty()) {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter.to_string_lossy()))
            .with_writer(std::io::stderr)
            .try_init();
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 125 } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    match crate::commands::dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("Error: {e:#}");
            crate::commands::exit_code_of(&e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_takes_the_command_after_the_image_verbatim() {
        let cli = Cli::try_parse_from([
            "strata", "run", "--rm", "-e", "A=1", "busybox", "sh", "-c", "exit 3",
        ])
        .unwrap();
        let Command::Run(a) = cli.command else {
            panic!()
        };
        assert!(a.rm);
        assert_eq!(a.args, ["busybox", "sh", "-c", "exit 3"]);
        let cli = Cli::try_parse_from(["strata", "exec", "-i", "c1", "ls", "-l"]).unwrap();
        let Command::Exec(a) = cli.command else {
            panic!()
        };
        assert_eq!(a.args, ["c1", "ls", "-l"]);
    }
}
