//! The import-circle guard: inside each library crate of the workspace, files import downward
//! only, so the imports between its files form no circle.
//!
//! A file imports another when its code names an item of the other through a path (`use` trees,
//! and paths in types, expressions, patterns and macro arguments) that starts with `crate::`,
//! `super::`, `self::` or the name of a child module. A path to a re-exported item counts as an
//! import of the file that defines the item (so `use crate::Stats` in a file imports `stats.rs`
//! when `lib.rs` says `pub use stats::Stats`). Declaring a child module (`mod x;`) is not an
//! import. Test modules count like any other code of their file.
//!
//! Files are parsed with `syn`, so comments, doc comments and string literals never count.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs;
use std::path::{Path, PathBuf};

use proc_macro2::{TokenStream, TokenTree};
use syn::visit::Visit;

use crate::{Result, cargo};

/// How many re-exports a path may pass through before the guard gives up following it.
const MAX_REEXPORT_HOPS: usize = 16;

/// Checks every library crate of the workspace; fails with the circle, file by file, of each
/// crate that has one.
pub fn check(root: &Path) -> Result<()> {
    let crates = library_crates(root)?;
    let mut failures = Vec::new();
    for (name, lib) in &crates {
        let graph = ImportGraph::load(lib)?;
        match graph.circle_report() {
            None => println!(
                "{name}: {} files, {} imports between files, no circle",
                graph.files.len(),
                graph.edges.len()
            ),
            Some(report) => failures.push(format!("{name}: {report}")),
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!("import circles found:\n{}", failures.join("\n")))
    }
}

/// The name and library root file (`src/lib.rs`) of every workspace package that has a library
/// target, from `cargo metadata`.
fn library_crates(root: &Path) -> Result<Vec<(String, PathBuf)>> {
    let text = cargo(
        root,
        [
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ],
        &[],
    )
    .stdout()?;
    let metadata: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("cannot read cargo metadata: {e}"))?;
    let mut crates = Vec::new();
    for package in metadata["packages"].as_array().into_iter().flatten() {
        let name = package["name"].as_str().unwrap_or_default();
        for target in package["targets"].as_array().into_iter().flatten() {
            let is_lib = target["kind"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|kind| kind == "lib");
            if let (true, Some(src)) = (is_lib, target["src_path"].as_str()) {
                crates.push((name.to_owned(), PathBuf::from(src)));
            }
        }
    }
    crates.sort();
    Ok(crates)
}

/// One module of a crate: a file, or an inline `mod x { ... }` inside one.
#[derive(Debug, Default)]
struct Module {
    /// The file that holds the module (index into [`ImportGraph::files`]).
    file: usize,
    /// The enclosing module; `None` for the crate root.
    parent: Option<usize>,
    /// Child modules by name.
    children: BTreeMap<String, usize>,
    /// The names of the other items defined here (types, functions, constants, macros, ...).
    items: BTreeSet<String>,
    /// Names brought in by `use`, each with the path it stands for.
    bindings: BTreeMap<String, Vec<String>>,
    /// The paths of glob imports (`use path::*`).
    globs: Vec<Vec<String>>,
    /// Every path this module's code names, with its line: candidates for imports.
    paths: Vec<(Vec<String>, usize)>,
}

/// The modules and files of one crate and the imports between its files.
#[derive(Debug)]
struct ImportGraph {
    /// The crate's directory (the parent of `src/`), for short file names in reports.
    base: PathBuf,
    /// Every file of the crate; index 0 is the root (`lib.rs`).
    files: Vec<PathBuf>,
    /// Every module; index 0 is the crate root.
    modules: Vec<Module>,
    /// For each (importing file, imported file): the first line and path that import it.
    edges: BTreeMap<(usize, usize), (usize, String)>,
}

impl ImportGraph {
    /// Reads the crate whose root file is `lib`, following `mod` declarations.
    fn load(lib: &Path) -> Result<Self> {
        let base = lib
            .parent()
            .and_then(Path::parent)
            .unwrap_or(Path::new(""))
            .to_path_buf();
        let mut graph = Self {
            base,
            files: Vec::new(),
            modules: Vec::new(),
            edges: BTreeMap::new(),
        };
        graph.load_file(lib, None, None)?;
        graph.resolve();
        Ok(graph)
    }

    /// Parses `path` as the module `name` inside `parent` (the root when `parent` is `None`).
    fn load_file(&mut self, path: &Path, parent: Option<usize>, name: Option<&str>) -> Result<()> {
        let text =
            fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let ast =
            syn::parse_file(&text).map_err(|e| format!("cannot parse {}: {e}", path.display()))?;
        let file = self.files.len();
        self.files.push(path.to_path_buf());
        let module = self.add_module(file, parent, name);
        let dirs = Dirs {
            children: child_dir(path),
            path_attribute: path.parent().unwrap_or(Path::new("")).to_path_buf(),
        };
        self.load_items(&ast.items, module, &dirs)
    }

    /// Adds an empty module and links it to its parent.
    fn add_module(&mut self, file: usize, parent: Option<usize>, name: Option<&str>) -> usize {
        let index = self.modules.len();
        self.modules.push(Module {
            file,
            parent,
            ..Module::default()
        });
        if let (Some(parent), Some(name)) = (parent, name) {
            self.modules[parent].children.insert(name.to_owned(), index);
        }
        index
    }

    /// Records the items of `module`; child modules declared without a body are files under
    /// `dirs`.
    fn load_items(&mut self, items: &[syn::Item], module: usize, dirs: &Dirs) -> Result<()> {
        for item in items {
            match item {
                syn::Item::Mod(inner) => {
                    let name = inner.ident.to_string();
                    if let Some((_, content)) = &inner.content {
                        let file = self.modules[module].file;
                        let child = self.add_module(file, Some(module), Some(&name));
                        let inner_dir = dirs.children.join(&name);
                        let inner_dirs = Dirs {
                            children: inner_dir.clone(),
                            path_attribute: inner_dir,
                        };
                        self.load_items(content, child, &inner_dirs)?;
                    } else {
                        let path = module_file(dirs, &name, &inner.attrs)?;
                        self.load_file(&path, Some(module), Some(&name))?;
                    }
                }
                syn::Item::Use(item_use) => {
                    let mut leaves = Vec::new();
                    use_leaves(&item_use.tree, &mut Vec::new(), &mut leaves);
                    let line = item_use.use_token.span.start().line;
                    let entry = &mut self.modules[module];
                    for leaf in leaves {
                        match leaf.name {
                            Some(name) => {
                                entry.bindings.insert(name, leaf.path.clone());
                            }
                            None => entry.globs.push(leaf.path.clone()),
                        }
                        entry.paths.push((leaf.path, line));
                    }
                }
                other => {
                    if let Some(name) = item_name(other) {
                        self.modules[module].items.insert(name);
                    }
                    let mut collector = PathCollector::default();
                    collector.visit_item(other);
                    self.modules[module].paths.extend(collector.paths);
                }
            }
        }
        Ok(())
    }

    /// Turns every recorded path into an import edge between files where it names another file.
    fn resolve(&mut self) {
        let mut edges = BTreeMap::new();
        for (index, module) in self.modules.iter().enumerate() {
            for (path, line) in &module.paths {
                let Some(target) = self.resolve_path(index, path, 0) else {
                    continue;
                };
                let (from, to) = (module.file, self.modules[target].file);
                if from != to {
                    edges
                        .entry((from, to))
                        .or_insert_with(|| (*line, path.join("::")));
                }
            }
        }
        self.edges = edges;
    }

    /// The module whose file a path used in `module` leads to, or `None` when the path leaves
    /// the crate or names something local to the module (a type parameter, a variable).
    fn resolve_path(&self, module: usize, path: &[String], hops: usize) -> Option<usize> {
        let (first, rest) = path.split_first()?;
        match first.as_str() {
            "crate" => self.walk(0, rest, hops),
            "self" => self.walk(module, rest, hops),
            "super" => {
                let mut current = self.modules[module].parent?;
                let mut rest = rest;
                while let Some((next, tail)) = rest.split_first()
                    && next == "super"
                {
                    current = self.modules[current].parent?;
                    rest = tail;
                }
                self.walk(current, rest, hops)
            }
            name if self.modules[module].children.contains_key(name) => {
                self.walk(module, path, hops)
            }
            name => {
                let bound = self.modules[module].bindings.get(name)?;
                if bound.first() == Some(first) || hops >= MAX_REEXPORT_HOPS {
                    return None;
                }
                let mut substituted = bound.clone();
                substituted.extend_from_slice(rest);
                self.resolve_path(module, &substituted, hops + 1)
            }
        }
    }

    /// Follows `path` down the module tree from `start`; the first segment that is not a child
    /// module names an item, which may be a re-export to follow.
    fn walk(&self, start: usize, path: &[String], hops: usize) -> Option<usize> {
        let mut current = start;
        for segment in path {
            match self.modules[current].children.get(segment) {
                Some(&child) => current = child,
                None => return Some(self.defining_module(current, segment, hops)),
            }
        }
        Some(current)
    }

    /// The module that defines `name` as seen from `module`: the module itself, or where a `use`
    /// or glob import of it leads.
    fn defining_module(&self, module: usize, name: &str, hops: usize) -> usize {
        let entry = &self.modules[module];
        if entry.items.contains(name) || hops >= MAX_REEXPORT_HOPS {
            return module;
        }
        if let Some(bound) = entry.bindings.get(name) {
            return self.resolve_path(module, bound, hops + 1).unwrap_or(module);
        }
        for glob in &entry.globs {
            if let Some(source) = self.resolve_path(module, glob, hops + 1)
                && source != module
                && self.defines(source, name)
            {
                return self.defining_module(source, name, hops + 1);
            }
        }
        module
    }

    /// Whether `module` defines or imports `name` by name.
    fn defines(&self, module: usize, name: &str) -> bool {
        let entry = &self.modules[module];
        entry.items.contains(name)
            || entry.bindings.contains_key(name)
            || entry.children.contains_key(name)
    }

    /// A report of the circles among the files, or `None` when there is none: for each group of
    /// files that import each other, the files, then one round trip through them with the import
    /// behind each step.
    fn circle_report(&self) -> Option<String> {
        let reports: Vec<String> = strongly_connected(self.files.len(), self.edges.keys().copied())
            .into_iter()
            .filter(|component| component.len() > 1)
            .filter_map(|component| self.describe_circle(&component.into_iter().collect()))
            .collect();
        (!reports.is_empty()).then(|| reports.join("\n"))
    }

    /// Describes one group of files that import each other in a circle.
    fn describe_circle(&self, members: &BTreeSet<usize>) -> Option<String> {
        let mut names: Vec<(String, usize)> = members
            .iter()
            .map(|&file| (self.short(file), file))
            .collect();
        names.sort();
        let &(_, start) = names.first()?;
        let cycle = self.shortest_cycle(start, members)?;
        let mut report = format!(
            "{} files import each other in a circle: {}\n  for example:",
            names.len(),
            names
                .iter()
                .map(|(name, _)| name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        for step in cycle.windows(2) {
            let (line, path) = &self.edges[&(step[0], step[1])];
            report.push_str(&format!(
                "\n    {} -> {}  ({}:{line} names {path})",
                self.short(step[0]),
                self.short(step[1]),
                self.short(step[0]),
            ));
        }
        Some(report)
    }

    /// The shortest round trip from `start` back to itself through `members`, as the list of
    /// files visited (first and last are `start`).
    fn shortest_cycle(&self, start: usize, members: &BTreeSet<usize>) -> Option<Vec<usize>> {
        let mut came_from: BTreeMap<usize, usize> = BTreeMap::new();
        let mut queue = VecDeque::from([start]);
        while let Some(file) = queue.pop_front() {
            for &(from, to) in self.edges.keys() {
                if from != file || !members.contains(&to) {
                    continue;
                }
                if to == start {
                    let mut path = vec![start, file];
                    let mut current = file;
                    while current != start {
                        current = came_from[&current];
                        path.push(current);
                    }
                    path.reverse();
                    return Some(path);
                }
                if let std::collections::btree_map::Entry::Vacant(slot) = came_from.entry(to) {
                    slot.insert(file);
                    queue.push_back(to);
                }
            }
        }
        None
    }

    /// A file's path relative to the crate directory, e.g. `src/config.rs`.
    fn short(&self, file: usize) -> String {
        let path = &self.files[file];
        path.strip_prefix(&self.base)
            .unwrap_or(path)
            .display()
            .to_string()
    }
}

/// The directory that holds the files of a file module's children: the file's own directory for
/// `lib.rs`, `main.rs` and `mod.rs`, else a directory named after the file.
fn child_dir(file: &Path) -> PathBuf {
    let dir = file.parent().unwrap_or(Path::new("")).to_path_buf();
    match file.file_stem().and_then(|stem| stem.to_str()) {
        Some("lib" | "main" | "mod") | None => dir,
        Some(stem) => dir.join(stem),
    }
}

/// Where the child modules declared in one module (without a body) are looked for.
struct Dirs {
    /// The directory of `name.rs` and `name/mod.rs`.
    children: PathBuf,
    /// The directory a `#[path]` attribute is relative to: the declaring file's own directory at
    /// the top of a file, the children's directory inside an inline module.
    path_attribute: PathBuf,
}

/// The file of the child module `name`: a `#[path]` attribute, `name.rs` or `name/mod.rs`.
fn module_file(dirs: &Dirs, name: &str, attrs: &[syn::Attribute]) -> Result<PathBuf> {
    let dir = &dirs.children;
    for attr in attrs {
        if attr.path().is_ident("path")
            && let syn::Meta::NameValue(pair) = &attr.meta
            && let syn::Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Str(value),
                ..
            }) = &pair.value
        {
            return Ok(dirs.path_attribute.join(value.value()));
        }
    }
    let flat = dir.join(format!("{name}.rs"));
    let nested = dir.join(name).join("mod.rs");
    if flat.is_file() {
        Ok(flat)
    } else if nested.is_file() {
        Ok(nested)
    } else {
        Err(format!(
            "module `{name}`: neither {} nor {} exists",
            flat.display(),
            nested.display()
        ))
    }
}

/// One name a `use` item brings in.
struct UseLeaf {
    /// The full path, e.g. `crate::state::Shared` (for a glob, the path before `*`).
    path: Vec<String>,
    /// The name it is known by here; `None` for a glob or an `as _` import.
    name: Option<String>,
}

/// Flattens a use tree into its leaves.
fn use_leaves(tree: &syn::UseTree, prefix: &mut Vec<String>, leaves: &mut Vec<UseLeaf>) {
    match tree {
        syn::UseTree::Path(path) => {
            prefix.push(path.ident.to_string());
            use_leaves(&path.tree, prefix, leaves);
            prefix.pop();
        }
        syn::UseTree::Name(name) => {
            let ident = name.ident.to_string();
            let (path, bound) = if ident == "self" {
                (prefix.clone(), prefix.last().cloned())
            } else {
                let mut path = prefix.clone();
                path.push(ident.clone());
                (path, Some(ident))
            };
            leaves.push(UseLeaf { path, name: bound });
        }
        syn::UseTree::Rename(rename) => {
            let ident = rename.ident.to_string();
            let mut path = prefix.clone();
            if ident != "self" {
                path.push(ident);
            }
            let alias = rename.rename.to_string();
            leaves.push(UseLeaf {
                path,
                name: (alias != "_").then_some(alias),
            });
        }
        syn::UseTree::Glob(_) => leaves.push(UseLeaf {
            path: prefix.clone(),
            name: None,
        }),
        syn::UseTree::Group(group) => {
            for tree in &group.items {
                use_leaves(tree, prefix, leaves);
            }
        }
    }
}

/// The name an item defines in its module's namespace, if any (modules and imports are handled
/// on their own).
fn item_name(item: &syn::Item) -> Option<String> {
    let ident = match item {
        syn::Item::Const(item) => &item.ident,
        syn::Item::Enum(item) => &item.ident,
        syn::Item::Fn(item) => &item.sig.ident,
        syn::Item::Static(item) => &item.ident,
        syn::Item::Struct(item) => &item.ident,
        syn::Item::Trait(item) => &item.ident,
        syn::Item::TraitAlias(item) => &item.ident,
        syn::Item::Type(item) => &item.ident,
        syn::Item::Union(item) => &item.ident,
        syn::Item::Macro(item) => item.ident.as_ref()?,
        _ => return None,
    };
    Some(ident.to_string())
}

/// Collects the multi-segment paths that code names, including `use` items in function bodies and
/// paths written in macro arguments.
#[derive(Default)]
struct PathCollector {
    /// Each path with its line.
    paths: Vec<(Vec<String>, usize)>,
}

impl<'ast> Visit<'ast> for PathCollector {
    fn visit_path(&mut self, path: &'ast syn::Path) {
        if path.leading_colon.is_none() && path.segments.len() > 1 {
            let segments = path
                .segments
                .iter()
                .map(|segment| segment.ident.to_string())
                .collect();
            let line = path.segments[0].ident.span().start().line;
            self.paths.push((segments, line));
        }
        syn::visit::visit_path(self, path);
    }

    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        let mut leaves = Vec::new();
        use_leaves(&item.tree, &mut Vec::new(), &mut leaves);
        let line = item.use_token.span.start().line;
        self.paths
            .extend(leaves.into_iter().map(|leaf| (leaf.path, line)));
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        macro_paths(mac.tokens.clone(), &mut self.paths);
        syn::visit::visit_macro(self, mac);
    }
}

/// Finds `crate::a::b` and `super::a` paths in the tokens of a macro call (not `$crate::...`).
fn macro_paths(tokens: TokenStream, paths: &mut Vec<(Vec<String>, usize)>) {
    let tokens: Vec<TokenTree> = tokens.into_iter().collect();
    let mut index = 0;
    while index < tokens.len() {
        match &tokens[index] {
            TokenTree::Group(group) => {
                macro_paths(group.stream(), paths);
            }
            TokenTree::Ident(ident) if ident == "crate" || ident == "super" => {
                let after_dollar = index > 0
                    && matches!(&tokens[index - 1], TokenTree::Punct(p) if p.as_char() == '$');
                let mut segments = vec![ident.to_string()];
                let mut next = index + 1;
                while let (
                    Some(TokenTree::Punct(a)),
                    Some(TokenTree::Punct(b)),
                    Some(TokenTree::Ident(name)),
                ) = (tokens.get(next), tokens.get(next + 1), tokens.get(next + 2))
                {
                    if a.as_char() != ':' || b.as_char() != ':' {
                        break;
                    }
                    segments.push(name.to_string());
                    next += 3;
                }
                if !after_dollar && segments.len() > 1 {
                    paths.push((segments, ident.span().start().line));
                }
                index = next;
                continue;
            }
            _ => {}
        }
        index += 1;
    }
}

/// Tarjan's algorithm: the strongly connected components of a graph with `nodes` nodes.
fn strongly_connected(
    nodes: usize,
    edges: impl IntoIterator<Item = (usize, usize)>,
) -> Vec<Vec<usize>> {
    let mut successors = vec![Vec::new(); nodes];
    for (from, to) in edges {
        successors[from].push(to);
    }
    let mut state = Tarjan {
        successors,
        index: vec![None; nodes],
        low: vec![0; nodes],
        on_stack: vec![false; nodes],
        stack: Vec::new(),
        next: 0,
        components: Vec::new(),
    };
    for node in 0..nodes {
        if state.index[node].is_none() {
            state.visit(node);
        }
    }
    state.components
}

/// The working state of [`strongly_connected`].
struct Tarjan {
    /// The successors of each node.
    successors: Vec<Vec<usize>>,
    /// The visit order of each node, once visited.
    index: Vec<Option<usize>>,
    /// The lowest visit order reachable from each node.
    low: Vec<usize>,
    /// Whether each node is on the stack.
    on_stack: Vec<bool>,
    /// Nodes of components not finished yet.
    stack: Vec<usize>,
    /// The next visit order.
    next: usize,
    /// The finished components.
    components: Vec<Vec<usize>>,
}

impl Tarjan {
    /// Visits `node` and everything reachable from it (recursion depth is bounded by the number
    /// of files in a crate).
    fn visit(&mut self, node: usize) {
        self.index[node] = Some(self.next);
        self.low[node] = self.next;
        self.next += 1;
        self.stack.push(node);
        self.on_stack[node] = true;
        for next in self.successors[node].clone() {
            match self.index[next] {
                None => {
                    self.visit(next);
                    self.low[node] = self.low[node].min(self.low[next]);
                }
                Some(order) if self.on_stack[next] => {
                    self.low[node] = self.low[node].min(order);
                }
                Some(_) => {}
            }
        }
        if Some(self.low[node]) == self.index[node] {
            let mut component = Vec::new();
            while let Some(member) = self.stack.pop() {
                self.on_stack[member] = false;
                component.push(member);
                if member == node {
                    break;
                }
            }
            self.components.push(component);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A crate written to a scratch directory, removed on drop.
    struct Fixture(PathBuf);

    impl Fixture {
        /// Writes `files` (paths relative to the crate directory) and returns the crate.
        fn new(files: &[(&str, &str)]) -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "xtask-circles-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            for (path, text) in files {
                let path = dir.join(path);
                fs::create_dir_all(path.parent().unwrap()).unwrap();
                fs::write(path, text).unwrap();
            }
            Self(dir)
        }

        /// The circle report of the crate, `None` when it has no circle.
        fn report(&self) -> Option<String> {
            ImportGraph::load(&self.0.join("src/lib.rs"))
                .unwrap()
                .circle_report()
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            fs::remove_dir_all(&self.0).ok();
        }
    }

    #[test]
    fn reports_a_circle_file_by_file_with_the_import_behind_each_step() {
        let fixture = Fixture::new(&[
            ("src/lib.rs", "mod a;\nmod b;\nmod c;\n"),
            ("src/a.rs", "use crate::b::B;\npub struct A;\n"),
            ("src/b.rs", "pub struct B(pub crate::c::C);\n"),
            ("src/c.rs", "pub struct C;\n\nfn f(_: super::a::A) {}\n"),
        ]);
        let report = fixture.report().expect("a circle");
        assert!(
            report.starts_with(
                "3 files import each other in a circle: src/a.rs, src/b.rs, src/c.rs\n"
            ),
            "{report}"
        );
        for step in [
            "src/a.rs -> src/b.rs  (src/a.rs:1 names crate::b::B)",
            "src/b.rs -> src/c.rs  (src/b.rs:1 names crate::c::C)",
            "src/c.rs -> src/a.rs  (src/c.rs:3 names super::a::A)",
        ] {
            assert!(report.contains(step), "{step} missing from\n{report}");
        }
    }

    #[test]
    fn downward_imports_pass_and_comments_strings_and_tests_do_not_count() {
        let fixture = Fixture::new(&[
            ("src/lib.rs", "mod high;\nmod low;\npub use high::High;\n"),
            (
                "src/high.rs",
                "use crate::low::Low;\npub struct High(Low);\n",
            ),
            (
                "src/low.rs",
                "//! See [`High`](crate::high::High).\n\
                 // crate::high::High\n\
                 /* crate::high::High */\n\
                 pub struct Low;\n\
                 const NAME: &str = \"crate::high::High\";\n\
                 #[cfg(test)]\n\
                 mod tests {\n    use super::*;\n    fn f(_: self::Low) {}\n}\n",
            ),
        ]);
        assert_eq!(fixture.report(), None);
        let graph = ImportGraph::load(&fixture.0.join("src/lib.rs")).unwrap();
        let mut edges: Vec<(String, String)> = graph
            .edges
            .keys()
            .map(|&(from, to)| (graph.short(from), graph.short(to)))
            .collect();
        edges.sort();
        assert_eq!(
            edges,
            [
                ("src/high.rs".to_owned(), "src/low.rs".to_owned()),
                ("src/lib.rs".to_owned(), "src/high.rs".to_owned()),
            ]
        );
    }

    #[test]
    fn re_exports_lead_to_the_file_that_defines_the_item() {
        let fixture = Fixture::new(&[
            (
                "src/lib.rs",
                "mod a;\nmod b;\npub use a::Thing as Renamed;\npub use b::*;\n",
            ),
            ("src/a.rs", "pub struct Thing;\nfn f(_: crate::Other) {}\n"),
            (
                "src/b.rs",
                "pub struct Other;\nfn g(_: crate::Renamed) {}\n",
            ),
        ]);
        let report = fixture.report().expect("a circle");
        assert!(
            report.contains("src/a.rs -> src/b.rs  (src/a.rs:2 names crate::Other)"),
            "{report}"
        );
        assert!(
            report.contains("src/b.rs -> src/a.rs  (src/b.rs:2 names crate::Renamed)"),
            "{report}"
        );
    }

    #[test]
    fn directory_modules_globs_and_macro_arguments_count() {
        let fixture = Fixture::new(&[
            ("src/lib.rs", "mod api;\n"),
            (
                "src/api/mod.rs",
                "mod child;\nmod routes;\nmod run;\npub use child::Child;\npub struct Parent;\n",
            ),
            ("src/api/child.rs", "use super::*;\npub struct Child;\n"),
            ("src/api/routes.rs", "pub fn handler() -> u8 { 1 }\n"),
            (
                "src/api/run.rs",
                "macro_rules! m { () => { $crate::api::routes::handler() } }\n\
                 pub fn run() -> String {\n    format!(\"{}\", super::routes::handler())\n}\n",
            ),
        ]);
        let report = fixture.report().expect("a circle");
        assert!(
            report.starts_with(
                "2 files import each other in a circle: src/api/child.rs, src/api/mod.rs\n"
            ),
            "{report}"
        );
        assert!(
            report.contains("src/api/child.rs -> src/api/mod.rs  (src/api/child.rs:1 names super)"),
            "{report}"
        );
        let graph = ImportGraph::load(&fixture.0.join("src/lib.rs")).unwrap();
        let run_to_routes = graph.edges.iter().find(|((from, to), _)| {
            graph.short(*from) == "src/api/run.rs" && graph.short(*to) == "src/api/routes.rs"
        });
        assert_eq!(
            run_to_routes.map(|(_, (line, path))| (*line, path.as_str())),
            Some((3, "super::routes::handler"))
        );
    }

    #[test]
    fn path_attributes_are_relative_to_the_declaring_file() {
        let fixture = Fixture::new(&[
            ("src/lib.rs", "mod grant;\n"),
            ("src/grant/mod.rs", "mod phase;\npub struct Grant;\n"),
            (
                "src/grant/phase.rs",
                "pub struct Phase;\n#[cfg(test)]\n#[path = \"phase_tests.rs\"]\nmod tests;\n",
            ),
            (
                "src/grant/phase_tests.rs",
                "use super::Phase;\nfn f(_: crate::grant::Grant) {}\n",
            ),
        ]);
        let graph = ImportGraph::load(&fixture.0.join("src/lib.rs")).unwrap();
        let files: Vec<String> = (0..graph.files.len()).map(|f| graph.short(f)).collect();
        assert!(
            files.contains(&"src/grant/phase_tests.rs".to_owned()),
            "{files:?}"
        );
        assert_eq!(fixture.report(), None);
    }

    #[test]
    fn a_missing_module_file_is_an_error() {
        let fixture = Fixture::new(&[("src/lib.rs", "mod gone;\n")]);
        let error = ImportGraph::load(&fixture.0.join("src/lib.rs")).unwrap_err();
        assert!(error.contains("module `gone`"), "{error}");
    }
}
