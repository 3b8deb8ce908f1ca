//! `inspect`: containers and images as JSON, or through a template.

use anyhow::{anyhow, Result};

use super::files::container_json;
use super::images::image_json;
use super::Ctx;
use crate::cli::{InspectArgs, ObjectKind};
use crate::format;

pub(super) fn inspect(ctx: &Ctx, a: &InspectArgs) -> Result<i32> {
    let (names, kind, fmt) = (&a.names, a.kind, a.format.as_deref());
    let mut out = Vec::new();
    for n in names {
        let v = match kind {
            Some(ObjectKind::Container) => container_json(ctx, &ctx.container(n)?)?,
            Some(ObjectKind::Image) => image_json(ctx, n)?,
            None => match ctx.reg.find(n) {
                Ok(c) => container_json(ctx, &c)?,
                Err(crate::container::Error::NotFound(_)) => {
                    image_json(ctx, n).map_err(|_| anyhow!("no such object: {n}"))?
                }
                Err(e) => return Err(e.into()),
            },
        };
        out.push(v);
    }
    match fmt {
        None | Some("json") => println!("{}", serde_json::to_string_pretty(&out)?),
        Some(tpl) => {
            for v in &out {
                println!("{}", format::go_template(tpl, v));
            }
        }
    }
    Ok(0)
}
