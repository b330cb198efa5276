//! Step 2, resolve: the resource DAG. Edges run from a dependency to the
//! resource that needs it; a cycle is one diagnostic naming every member.

use std::collections::HashMap;
use std::fmt::Write;

use petgraph::algo::{tarjan_scc, toposort};
use petgraph::graph::{DiGraph, NodeIndex};

use crate::diagnostic::Problem;
use crate::spec::{Address, Spec};

/// The dependency graph over a spec's resources (node weight: index into
/// `spec.resources`).
pub struct Graph {
    pub dag: DiGraph<usize, ()>,
    /// Resource indices in an order where dependencies come first.
    pub order: Vec<usize>,
}

impl Graph {
    pub fn build(spec: &Spec) -> Result<Graph, Problem> {
        let mut dag = DiGraph::new();
        let nodes: Vec<NodeIndex> = (0..spec.resources.len()).map(|i| dag.add_node(i)).collect();
        let index: HashMap<&Address, usize> = spec
            .resources
            .iter()
            .enumerate()
            .map(|(i, r)| (&r.address, i))
            .collect();
        for (i, declared) in spec.resources.iter().enumerate() {
            for reference in &declared.depends_on {
                // Unknown references were already reported by the loader.
                if let Some(&dep) = index.get(&reference.address) {
                    dag.update_edge(nodes[dep], nodes[i], ());
                }
            }
        }
        match toposort(&dag, None) {
            Ok(sorted) => Ok(Graph {
                order: sorted.into_iter().map(|n| dag[n]).collect(),
                dag,
            }),
            Err(_) => Err(cycle_problem(spec, &dag)),
        }
    }

    /// Indices of the resources `i` depends on directly.
    pub fn dependencies(&self, i: usize) -> Vec<usize> {
        self.dag
            .neighbors_directed(NodeIndex::new(i), petgraph::Direction::Incoming)
            .map(|n| self.dag[n])
            .collect()
    }

    /// Indices of the resources that depend on `i` directly.
    pub fn dependents(&self, i: usize) -> Vec<usize> {
        self.dag
            .neighbors_directed(NodeIndex::new(i), petgraph::Direction::Outgoing)
            .map(|n| self.dag[n])
            .collect()
    }

    /// `targets` and everything they depend on, transitively.
    pub fn with_dependencies(&self, targets: &[usize]) -> Vec<bool> {
        let mut keep = vec![false; self.order.len()];
        let mut stack: Vec<usize> = targets.to_vec();
        while let Some(i) = stack.pop() {
            if !keep[i] {
                keep[i] = true;
                stack.extend(self.dependencies(i));
            }
        }
        keep
    }

    /// The graph in Graphviz DOT.
    pub fn to_dot(&self, spec: &Spec) -> String {
        let mut out =
            String::from("digraph plasma {\n    rankdir = LR;\n    node [shape = box];\n");
        for &i in &self.order {
            let _ = writeln!(out, "    \"{}\";", spec.resources[i].address);
        }
        for edge in self.dag.raw_edges() {
            let from = &spec.resources[self.dag[edge.source()]].address;
            let to = &spec.resources[self.dag[edge.target()]].address;
            let _ = writeln!(out, "    \"{from}\" -> \"{to}\";");
        }
        out.push_str("}\n");
        out
    }
}

/// One diagnostic for a cycle, labelling every member's reference.
fn cycle_problem(spec: &Spec, dag: &DiGraph<usize, ()>) -> Problem {
    let cycle = tarjan_scc(dag)
        .into_iter()
        .find(|scc| scc.len() > 1 || dag.contains_edge(scc[0], scc[0]))
        .unwrap_or_default();
    let members: Vec<usize> = cycle.iter().map(|n| dag[*n]).collect();
    let mut names: Vec<String> = members
        .iter()
        .map(|&i| spec.resources[i].address.to_string())
        .collect();
    names.sort();
    let mut problem = Problem::error(
        "graph::cycle",
        format!("dependency cycle between {}", names.join(", ")),
    )
    .help("remove one of these references or `depends-on` entries to break the cycle");
    for &i in &members {
        let declared = &spec.resources[i];
        // Label the reference that points at another member of the cycle.
        let reference = declared.depends_on.iter().find(|r| {
            members
                .iter()
                .any(|&m| spec.resources[m].address == r.address)
        });
        if let Some(reference) = reference {
            problem = problem.label(
                reference.span,
                format!("{} depends on {}", declared.address, reference.address),
            );
        }
    }
    problem.with_source(&spec.source)
}
