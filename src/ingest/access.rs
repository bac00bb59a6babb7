//! Who may read `merged.log`: a reader may read it only if it could read every file it
//! renders from, through every directory on the way (DESIGN §2, README "Security").
//!
//! The inputs are the owner, group and mode of every directory from `/` to the `logs/`
//! directory (each must grant search) and of every file of every chain (each must
//! grant read). One owner, group and mode must stand for all of them, and the kernel
//! checks exactly one class per reader (owner, else group, else other), so each class
//! of the result is granted only when every reader it can contain is granted by every
//! input, whatever other groups that reader is in. With one owner and one group for
//! everything this is exact; with several it errs towards denying (root, which reads
//! anything directly, reads it anyway).

use crate::source::dir::Access;

const OWNER: u32 = 0o4;
const GROUP: u32 = 0o2;
const OTHER: u32 = 0o1;

/// The permission triple an input grants per class (bit 2 owner, 1 group, 0 other).
fn grants(input: &Access) -> u32 {
    let shift = if input.is_dir() { 0 } else { 2 };
    let bit = |class_shift: u32| (input.mode >> (class_shift + shift)) & 1;
    bit(6) << 2 | bit(3) << 1 | bit(0)
}

/// True when every reader of a class of the result is granted by `input`. `owner`
/// says the reader is the result's owner `uid`; otherwise `in_group` says whether it
/// is in the result's group `gid`.
fn class_granted(input: &Access, uid: u32, gid: u32, owner: bool, in_group: bool) -> bool {
    let g = grants(input);
    // The reader may be the input's owner unless it is known not to be.
    let may_be_input_owner = if owner { input.uid == uid } else { input.uid != uid };
    let is_input_owner = owner && input.uid == uid;
    if is_input_owner {
        return g & OWNER != 0;
    }
    let owner_ok = !may_be_input_owner || g & OWNER != 0;
    // In the input's group for sure (group class of the same group), or perhaps.
    let group_ok = if !owner && in_group && input.gid == gid {
        g & GROUP != 0
    } else if !owner && !in_group && input.gid == gid {
        // Not in the result's group, which is the input's: the other class applies.
        g & OTHER != 0
    } else {
        g & GROUP != 0 && g & OTHER != 0
    };
    owner_ok && group_ok
}

/// The owner, group and permission bits of a file rendered from `inputs`. The owner
/// and group are the most common ones among the files (the directories' when there
/// are no files); with no inputs at all only the owner (root) may read.
pub fn merged_access(inputs: &[Access]) -> (u32, u32, u16) {
    let files: Vec<&Access> = inputs.iter().filter(|a| !a.is_dir()).collect();
    let pool: Vec<&Access> = if files.is_empty() { inputs.iter().collect() } else { files };
    let most_common = |key: fn(&Access) -> u32| {
        let mut counts: Vec<(u32, usize)> = Vec::new();
        for a in &pool {
            match counts.iter_mut().find(|(k, _)| *k == key(a)) {
                Some((_, n)) => *n += 1,
                None => counts.push((key(a), 1)),
            }
        }
        counts.into_iter().max_by_key(|(_, n)| *n).map_or(0, |(k, _)| k)
    };
    let (uid, gid) = (most_common(|a| a.uid), most_common(|a| a.gid));
    if inputs.is_empty() {
        return (uid, gid, 0o400);
    }
    let all = |owner: bool, in_group: bool| inputs.iter().all(|a| class_granted(a, uid, gid, owner, in_group));
    let mut mode = 0u16;
    if all(true, false) {
        mode |= 0o400;
    }
    if all(false, true) {
        mode |= 0o040;
    }
    if all(false, false) {
        mode |= 0o004;
    }
    (uid, gid, mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(uid: u32, gid: u32, perm: u32) -> Access {
        Access { uid, gid, mode: libc::S_IFREG | perm }
    }

    fn dir(uid: u32, gid: u32, perm: u32) -> Access {
        Access { uid, gid, mode: libc::S_IFDIR | perm }
    }

    /// Whether the kernel lets (uid, groups) read `a` directly.
    fn kernel_allows(a: &Access, uid: u32, groups: &[u32]) -> bool {
        let g = grants(a);
        if a.uid == uid {
            g & OWNER != 0
        } else if groups.contains(&a.gid) {
            g & GROUP != 0
        } else {
            g & OTHER != 0
        }
    }

    #[test]
    fn one_owner_and_group_is_exact() {
        let inputs = [dir(1000, 1000, 0o755), dir(1000, 1000, 0o750), file(1000, 1000, 0o644), file(1000, 1000, 0o640)];
        assert_eq!(merged_access(&inputs), (1000, 1000, 0o440));
        let open = [dir(1000, 1000, 0o755), file(1000, 1000, 0o644)];
        assert_eq!(merged_access(&open), (1000, 1000, 0o444));
    }

    #[test]
    fn the_strictest_input_wins() {
        // The cases: a 0600 rotated file, a 0700 logs/ or sandbox directory.
        for strict in [file(1000, 1000, 0o600), dir(1000, 1000, 0o700)] {
            let inputs = [dir(1000, 1000, 0o755), file(1000, 1000, 0o644), strict];
            assert_eq!(merged_access(&inputs).2, 0o400, "{strict:?}");
        }
        // A hard link to /etc/shadow (root:shadow 0640) among files of user 1000.
        let inputs = [dir(1000, 1000, 0o755), file(1000, 1000, 0o644), file(1000, 1000, 0o644), file(0, 42, 0o640)];
        let (uid, gid, mode) = merged_access(&inputs);
        assert_eq!((uid, gid), (1000, 1000));
        assert_eq!(mode, 0, "nobody but root reads it: the owner of the rest cannot read shadow");
    }

    #[test]
    fn no_reader_gets_more_than_every_input_allows() {
        // Exhaustive over small worlds: three users, three groups, every mode per class.
        let perms = [0o0, 0o4, 0o6, 0o5, 0o7];
        let users = [1, 2, 3];
        let memberships: [&[u32]; 4] = [&[], &[10], &[11], &[10, 11]];
        let mut checked = 0;
        for &a_perm in &[0o444, 0o440, 0o404, 0o044, 0o400, 0o040, 0o004, 0o000] {
            for (ua, ga) in [(1, 10), (2, 11), (1, 11)] {
                for (ub, gb) in [(1, 10), (2, 10), (3, 11)] {
                    for &p in &perms {
                        let b_perm = (p << 6) | (p << 3) | p;
                        let inputs = [file(ua, ga, a_perm), dir(ub, gb, b_perm & 0o777)];
                        let (uid, gid, mode) = merged_access(&inputs);
                        let merged = file(uid, gid, u32::from(mode));
                        for &u in &users {
                            for groups in memberships {
                                if kernel_allows(&merged, u, groups) {
                                    assert!(
                                        inputs.iter().all(|i| kernel_allows(i, u, groups)),
                                        "user {u} {groups:?} reads merged {merged:?} but not all of {inputs:?}"
                                    );
                                }
                                checked += 1;
                            }
                        }
                    }
                }
            }
        }
        assert!(checked > 1000);
    }
}
