//! Fault injection for tests: named points in the steps of a namespace
//! change where a test can make the step fail, or kill the process there,
//! to check that a change that fails part-way (or a server killed
//! part-way) leaves the tree as it was. Compiled only for tests; in the
//! shipped filesystem every point is `Ok(())`.

use crate::overlay::Res;

/// What an armed point does when reached.
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Fails the step with this errno.
    Fail(nix::errno::Errno),
    /// Lets this hit through (a later one of the same point fires).
    Pass,
    /// Kills the process with SIGKILL, as a crash would.
    Kill,
}

#[cfg(test)]
thread_local! {
    /// The points armed on this thread (each fires once), in order.
    static ARMED: std::cell::RefCell<Vec<(&'static str, Fault)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// A step of a change: fails with the armed errno (or kills the process)
/// when a test armed this point on this thread (once), else does nothing.
#[inline]
pub(crate) fn point(name: &'static str) -> Res<()> {
    #[cfg(test)]
    {
        let hit = ARMED.with_borrow_mut(|armed| {
            let i = armed.iter().position(|(n, _)| *n == name)?;
            Some(armed.remove(i).1)
        });
        match hit {
            Some(Fault::Pass) | None => {}
            Some(Fault::Fail(errno)) => return Err(errno),
            Some(Fault::Kill) => {
                let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
                unreachable!("SIGKILL cannot be caught");
            }
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
    let faults = points.iter().map(|&(n, e)| {
        let f = if e == PASS {
            Fault::Pass
        } else {
            Fault::Fail(e)
        };
        (n, f)
    });
    ARMED.with_borrow_mut(|armed| *armed = faults.collect());
}

/// Makes the `nth` hit (from 0) of the point `name` on this thread kill the
/// process with SIGKILL.
#[cfg(test)]
pub(crate) fn arm_kill(name: &'static str, nth: usize) {
    let mut faults = vec![(name, Fault::Pass); nth];
    faults.push((name, Fault::Kill));
    ARMED.with_borrow_mut(|armed| *armed = faults);
}

/// Whether every armed point was reached (and so fired).
#[cfg(test)]
pub(crate) fn all_fired() -> bool {
    ARMED.with_borrow(|armed| armed.is_empty())
}
