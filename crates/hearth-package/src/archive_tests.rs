use super::*;

/// A tar header named `name` byte for byte: the tar crate's own setters refuse the hostile
/// names these tests need.
fn raw_header(name: &[u8], kind: EntryType, size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.as_old_mut().name[..name.len()].copy_from_slice(name);
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(0o644);
    header.set_cksum();
    header
}

fn archive_of(entries: &[(&[u8], EntryType, &[u8])]) -> Vec<u8> {
    let mut builder = Builder::new(Vec::new());
    for (name, kind, data) in entries {
        builder.append(&raw_header(name, *kind, data.len() as u64), *data).unwrap();
    }
    builder.into_inner().unwrap()
}

fn unpack_into(
    bytes: &[u8],
    limits: &ArchiveLimits,
) -> (tempfile::TempDir, Result<Unpacked, ArchiveError>) {
    let root = tempfile::tempdir().unwrap();
    let dest = root.path().join("stage");
    fs::create_dir(&dest).unwrap();
    let result = unpack(bytes, &dest, limits);
    (root, result)
}

fn refused(bytes: &[u8]) -> String {
    let (root, result) = unpack_into(bytes, &ArchiveLimits::default());
    let err = result.expect_err("the archive should be refused");
    // Nothing may appear beside the staging directory, whatever the archive asked for.
    let siblings: Vec<_> =
        fs::read_dir(root.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(siblings, ["stage"], "something was written outside the staging directory");
    err.to_string()
}

#[test]
fn a_packed_directory_unpacks_to_the_same_files() {
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("cog.yaml"), "build: {}\n").unwrap();
    let long = "d".repeat(120);
    fs::create_dir_all(src.path().join("weights").join(&long)).unwrap();
    fs::write(src.path().join("weights").join(&long).join("w.bin"), vec![7u8; 1500]).unwrap();
    fs::create_dir(src.path().join(".git")).unwrap();
    fs::write(src.path().join(".git/HEAD"), "ref").unwrap();

    let plan = PackPlan::new(src.path()).unwrap();
    assert_eq!(plan.num_files(), 2);
    let bytes = plan.write(Vec::new()).unwrap();
    assert!(plan.archive_bytes() <= bytes.len() as u64);

    let (root, result) = unpack_into(&bytes, &ArchiveLimits::default());
    let unpacked = result.unwrap();
    assert_eq!((unpacked.files, unpacked.bytes), (2, 1500 + 10));
    let dest = root.path().join("stage");
    assert_eq!(fs::read(dest.join("weights").join(&long).join("w.bin")).unwrap(), vec![7u8; 1500]);
    assert!(!dest.join(".git").exists());
}

#[test]
fn archives_of_dot_as_tar_writes_them_are_accepted() {
    let bytes = archive_of(&[
        (b"./", EntryType::Directory, b""),
        (b"./sub/", EntryType::Directory, b""),
        (b"./sub/cog.yaml", EntryType::Regular, b"build: {}\n"),
    ]);
    let (root, result) = unpack_into(&bytes, &ArchiveLimits::default());
    assert_eq!(result.unwrap().files, 1);
    assert!(root.path().join("stage/sub/cog.yaml").is_file());
}

#[test]
fn paths_that_leave_the_directory_are_refused() {
    let traversal = archive_of(&[(b"../evil.txt", EntryType::Regular, b"x")]);
    assert!(refused(&traversal).contains("`..` would leave the package directory"));
    let nested = archive_of(&[(b"a/../../evil.txt", EntryType::Regular, b"x")]);
    assert!(refused(&nested).contains("`..`"));
    let absolute = archive_of(&[(b"/tmp/evil.txt", EntryType::Regular, b"x")]);
    assert!(refused(&absolute).contains("absolute paths are not allowed"));
}

#[test]
fn links_devices_and_fifos_are_refused() {
    let mut symlink = raw_header(b"config.json", EntryType::Symlink, 0);
    symlink.set_link_name("/etc/passwd").unwrap();
    symlink.set_cksum();
    let mut builder = Builder::new(Vec::new());
    builder.append(&symlink, io::empty()).unwrap();
    let bytes = builder.into_inner().unwrap();
    assert!(refused(&bytes).contains("symbolic links are not allowed"));

    let hardlink = archive_of(&[(b"x", EntryType::Link, b"")]);
    assert!(refused(&hardlink).contains("hard links"));
    let device = archive_of(&[(b"x", EntryType::Char, b"")]);
    assert!(refused(&device).contains("device files"));
    let fifo = archive_of(&[(b"x", EntryType::Fifo, b"")]);
    assert!(refused(&fifo).contains("FIFOs"));
}

#[test]
fn size_limits_are_enforced() {
    let limits =
        ArchiveLimits { max_archive_bytes: 1 << 20, max_entry_bytes: 1000, max_entries: 3 };
    let big_entry = archive_of(&[(b"big.bin", EntryType::Regular, &[0u8; 1001])]);
    let (_root, result) = unpack_into(&big_entry, &limits);
    assert!(matches!(result, Err(ArchiveError::EntryTooLarge { size: 1001, .. })), "{result:?}");

    let small = [0u8; 900];
    let many: Vec<(&[u8], EntryType, &[u8])> = vec![
        (b"a", EntryType::Regular, &small),
        (b"b", EntryType::Regular, &small),
        (b"c", EntryType::Regular, &small),
        (b"d", EntryType::Regular, &small),
    ];
    let (_root, result) = unpack_into(&archive_of(&many), &limits);
    assert!(matches!(result, Err(ArchiveError::TooManyEntries { limit: 3 })), "{result:?}");

    let tight = ArchiveLimits { max_archive_bytes: 2000, ..limits };
    let (_root, result) = unpack_into(&archive_of(&many[..3]), &tight);
    assert!(matches!(result, Err(ArchiveError::TooLarge { limit: 2000 })), "{result:?}");
}

#[test]
fn duplicates_truncation_and_garbage_are_refused() {
    let twice = archive_of(&[(b"a", EntryType::Regular, b"1"), (b"./a", EntryType::Regular, b"2")]);
    assert!(refused(&twice).contains("appears twice"));

    let whole = archive_of(&[(b"a.bin", EntryType::Regular, &[1u8; 4000])]);
    let (_root, result) = unpack_into(&whole[..2048], &ArchiveLimits::default());
    assert!(matches!(result, Err(ArchiveError::Malformed(_))), "{result:?}");

    let (_root, result) = unpack_into(&[b'x'; 1024], &ArchiveLimits::default());
    assert!(matches!(result, Err(ArchiveError::Malformed(_))), "{result:?}");
}

#[test]
fn oversized_metadata_records_are_refused_before_reading_them() {
    let huge_name = vec![b'a'; (MAX_METADATA_BYTES + 1) as usize];
    let bytes = archive_of(&[
        (b"././@LongLink", EntryType::GNULongName, &huge_name),
        (b"x", EntryType::Regular, b""),
    ]);
    assert!(refused(&bytes).contains("over the limit"));
    let pax_size = archive_of(&[
        (b"pax", EntryType::XHeader, b"16 size=1000000\n"),
        (b"x", EntryType::Regular, b""),
    ]);
    assert!(refused(&pax_size).contains("PAX `size`"));
}

#[test]
fn pax_paths_are_checked_like_header_paths() {
    let record = b"21 path=../../escape\n";
    let bytes =
        archive_of(&[(b"pax", EntryType::XHeader, record), (b"fine", EntryType::Regular, b"x")]);
    assert!(refused(&bytes).contains("`..`"));
}
