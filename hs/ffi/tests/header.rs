//! The committed C header `hs/ffi/include/hs.h` is exactly what cbindgen generates
//! from `hs/ffi/src/` with `hs/ffi/cbindgen.toml`. cbindgen runs here as a library,
//! so no cbindgen binary is needed. After changing the C API, regenerate with
//!
//!     HS_BLESS=1 cargo test -p hs-ffi --release --test header

use std::path::Path;

fn generate() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config =
        cbindgen::Config::from_file(root.join("cbindgen.toml")).expect("read hs/ffi/cbindgen.toml");
    // Every type this crate exports is defined in its own files: parsing them
    // (lib.rs and the modules it declares) is faster than the crate's
    // dependencies and needs no `cargo metadata`.
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(root.join("src/lib.rs"))
        .generate()
        .expect("cbindgen failed on hs/ffi/src");
    let mut out = Vec::new();
    bindings.write(&mut out);
    String::from_utf8(out).expect("cbindgen wrote UTF-8")
}

#[test]
fn committed_header_is_up_to_date() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("include/hs.h");
    let fresh = generate();
    if std::env::var_os("HS_BLESS").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &fresh).unwrap();
        eprintln!("wrote {}", path.display());
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed == fresh {
        return;
    }
    // Show the first differing lines, not the whole file.
    let (a, b): (Vec<_>, Vec<_>) = (committed.lines().collect(), fresh.lines().collect());
    let first = a
        .iter()
        .zip(&b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()));
    let show = |v: &[&str]| {
        v.iter()
            .skip(first)
            .take(6)
            .map(|l| format!("    {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    panic!(
        "hs/ffi/include/hs.h is out of date with hs/ffi/src ({} committed lines, {} generated); first difference at line {}:\n  committed:\n{}\n  generated:\n{}\nRegenerate it with: HS_BLESS=1 cargo test -p hs-ffi --release --test header",
        a.len(),
        b.len(),
        first + 1,
        show(&a),
        show(&b),
    );
}

/// The header is plain C99 that compiles on its own, warning-free, and C++11 too
/// where a C++ compiler is installed.
#[test]
fn header_compiles_as_c_and_cpp() {
    let include = Path::new(env!("CARGO_MANIFEST_DIR")).join("include");
    for (compiler, std) in [("cc", "-std=c99"), ("c++", "-std=c++11")] {
        if std::process::Command::new(compiler)
            .arg("--version")
            .output()
            .is_err()
        {
            // cc is required (scripts/setup.sh installs it); C++ is checked where present.
            assert!(
                compiler != "cc",
                "no C compiler `cc` on PATH: run scripts/setup.sh (it installs gcc)"
            );
            eprintln!("{compiler} not found; the C++ check is skipped");
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        let src = dir
            .path()
            .join(if compiler == "cc" { "t.c" } else { "t.cpp" });
        std::fs::write(&src, "#include \"hs.h\"\nint main(void) { hs_config c; c.struct_size = sizeof c; (void)c; return 0; }\n").unwrap();
        let out = std::process::Command::new(compiler)
            .args([
                std,
                "-Wall",
                "-Wextra",
                "-Werror",
                "-pedantic",
                "-fsyntax-only",
                "-I",
            ])
            .arg(&include)
            .arg(&src)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{compiler} rejects hs.h:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
