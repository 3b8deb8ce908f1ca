//! Reading the file `strata-mount -o stats=FILE` appends to when a mount
//! ends: one line per counter, its name then its value.

use std::path::Path;

/// The sum of counter `name` over every block in the stats file at `path`
/// (a request count such as `getxattr`, or `pruned`); 0 if absent.
pub fn count(path: &Path, name: &str) -> u64 {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some(name)).then(|| words.next()?.parse::<u64>().ok())?
        })
        .sum()
}
