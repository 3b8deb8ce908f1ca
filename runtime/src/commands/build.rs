//! `build`: flags into [`crate::build::BuildOptions`], and a failed RUN
//! into its exit code.

use std::fs;

use anyhow::{Context, Result};

use super::{Ctx, Exit};
use crate::build::{BuildError, BuildOptions, Builder};
use crate::cli::BuildArgs;

/// `build`: the build module does the work; a failed RUN exits with its
/// code.
pub(super) fn build(ctx: &Ctx, a: &BuildArgs) -> Result<i32> {
    let opts = BuildOptions {
        context: a.context.clone(),
        file: a.file.clone(),
        tags: a.tag.clone(),
        build_args: a.build_arg.clone(),
        target: a.target.clone(),
        no_cache: a.no_cache,
        quiet: a.quiet,
        network: a.network.clone(),
    };
    let what = match &a.file {
        Some(f) if f.as_os_str() == "-" => "the Containerfile on stdin".to_string(),
        Some(f) => f.display().to_string(),
        None => "the Containerfile".to_string(),
    };
    let r = Builder::new(&ctx.store, &ctx.reg, &ctx.root, &opts).and_then(Builder::build);
    let r = match r {
        Ok(r) => r,
        Err(BuildError::RunFailed { line, text, code }) => {
            return Err(Exit {
                code,
                message: format!(
                    "building {what}: line {line}: {text}: the command exited with code {code}"
                ),
            }
            .into())
        }
        Err(e) => return Err(anyhow::Error::new(e).context(format!("building {what}"))),
    };
    if let Some(f) = &a.iidfile {
        fs::write(f, r.id.to_string()).with_context(|| format!("write {}", f.display()))?;
    }
    println!("{}", r.id);
    Ok(0)
}
