//! Fault injection for tests: named points in the steps of a namespace
//! change where a test can make the step fail, to check that a change that
//! fails part-way leaves the tree as it was. Compiled only for tests; in
//! the shipped filesystem every point is `Ok(())`.

use crate::overlay::Res;

#[cfg(test)]
thread_local! {
    /// The points that fail on this thread (each once), with their errno.
    static ARMED: std::cell::RefCell<Vec<(&'static str, nix::errno::Errno)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// A step of a change: fails with the armed errno when a test armed this
/// point on this thread (once), else does nothing.
#[inline]
pub(crate) fn point(name: &'static str) -> Res<()> {
    #[cfg(test)]
    {
        let hit = ARMED.with_borrow_mut(|armed| {
            let i = armed.iter().position(|(n, _)| *n == name)?;
            Some(armed.remove(i).1)
        });
        match hit {
            // Armed with `PASS`: this hit goes through, a later one fails.
            Some(PASS) | None => {}
            Some(errno) => return Err(errno),
        }
    }
    let _ = name;
    Ok(())
}

/// Armed as a point's errno, lets one hit of it through: arming a point
/// with `PASS` and then an errno makes its second hit fail.
#[cfg(test)]
pub(crate) const PASS: nix::errno::Errno = nix::errno::Errno::UnknownErrno;

/// Makes each point fail once on this thread with its errno, in order.
#[cfg(test)]
pub(crate) fn arm(points: &[(&'static str, nix::errno::Errno)]) {
    ARMED.with_borrow_mut(|armed| *armed = points.to_vec());
}

/// Whether every armed point was reached (and so fired).
#[cfg(test)]
pub(crate) fn all_fired() -> bool {
    ARMED.with_borrow(|armed| armed.is_empty())
}
