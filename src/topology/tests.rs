use super::*;

#[test]
fn cpulist_parses_ranges_singles_and_blanks() {
    assert_eq!(
        parse_cpulist("0-3,8,10-11\n").unwrap(),
        vec![0, 1, 2, 3, 8, 10, 11]
    );
    assert_eq!(parse_cpulist("5").unwrap(), vec![5]);
    assert_eq!(parse_cpulist("\n").unwrap(), Vec::<usize>::new());
    assert!(parse_cpulist("3-1").is_err());
    assert!(parse_cpulist("a-b").is_err());
}

#[test]
fn cpulists_are_bounded_by_max_cpus_however_they_are_written() {
    // A CPU number past the bound is refused before anything is allocated
    // for it (this used to ask for 800 GB and abort).
    assert!(parse_cpulist("0-99999999999").is_err());
    assert!(parse_cpulist(&cpulist::MAX_CPUS.to_string()).is_err());
    assert!(parse_cpulist("18446744073709551615").is_err());
    assert!(parse_cpulist("0-18446744073709551616").is_err());
    let top = cpulist::MAX_CPUS - 1;
    assert_eq!(parse_cpulist(&format!("{top}")).unwrap(), [top]);
    assert_eq!(
        parse_cpulist(&format!("0-{top}")).unwrap().len(),
        cpulist::MAX_CPUS
    );
    // Many overlapping ranges cost one flag per CPU, not one entry per
    // range member; duplicates and order are folded.
    let many = vec![format!("0-{top}"); 500].join(",");
    assert_eq!(parse_cpulist(&many).unwrap().len(), cpulist::MAX_CPUS);
    assert_eq!(parse_cpulist("8,0-3,2,8").unwrap(), [0, 1, 2, 3, 8]);
}

#[test]
fn simulated_topologies_past_the_limits_are_refused_with_them() {
    for (nodes, cores) in [
        (Topology::MAX_NODES + 1, 1),
        (2, Topology::MAX_CORES),
        (100_000, 100_000),
        (usize::MAX, usize::MAX),
    ] {
        let err = Topology::simulated(nodes, cores).unwrap_err();
        assert_eq!(
            err,
            TopologyError::TooLarge {
                nodes,
                cores_per_node: cores,
                max_nodes: Topology::MAX_NODES,
                max_cores: Topology::MAX_CORES
            }
        );
        assert!(err.to_string().contains("at most 1024 nodes"), "{err}");
    }
    let err = Topology::parse_simulated("100000x100000").unwrap_err();
    assert!(matches!(err, TopologyError::TooLarge { .. }), "{err}");
    let edge = Topology::simulated(
        Topology::MAX_NODES,
        Topology::MAX_CORES / Topology::MAX_NODES,
    )
    .expect("exactly at both limits");
    assert_eq!(edge.num_cores(), Topology::MAX_CORES);
}

#[test]
fn cpulists_are_written_with_ranges_and_read_back() {
    assert_eq!(format_cpulist(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
    assert_eq!(format_cpulist(&[3]), "3");
    assert_eq!(format_cpulist(&[]), "");
    let cpus = vec![0, 2, 3, 4, 9, 10, 64];
    assert_eq!(parse_cpulist(&format_cpulist(&cpus)).unwrap(), cpus);
}

#[test]
fn simulated_topology_numbers_nodes_and_cores_densely() {
    let t = Topology::simulated(2, 3).unwrap();
    assert_eq!(t.num_nodes(), 2);
    assert_eq!(t.num_cores(), 6);
    assert_eq!(t.source(), TopologySource::Simulated);
    for (i, c) in t.cores().iter().enumerate() {
        assert_eq!(c.id, i);
        assert_eq!(c.node, i / 3);
    }
    let real = online_cpus().len();
    assert!(t.cores().iter().all(|c| c.os_cpu < real.max(1) + 1024));
}

#[test]
fn bad_specs_are_errors_that_say_what_to_write() {
    for spec in ["", "2", "x3", "2x", "axb", "2x4x1"] {
        let err = Topology::parse_simulated(spec).unwrap_err();
        assert!(err.to_string().contains("NODESxCORES"), "{spec}: {err}");
    }
    assert_eq!(
        Topology::parse_simulated("0x4").unwrap_err(),
        TopologyError::Empty {
            nodes: 0,
            cores_per_node: 4
        }
    );
    assert_eq!(Topology::parse_simulated(" 2X1 ").unwrap().num_nodes(), 2);
}

#[test]
fn sysfs_layout_is_read_from_a_fake_tree() {
    let dir = std::env::temp_dir().join(format!("noderep-sysfs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for (node, list) in [(0, "0-1\n"), (1, "2,3\n"), (2, "\n")] {
        let d = dir.join(format!("node{node}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("cpulist"), list).unwrap();
    }
    std::fs::create_dir_all(dir.join("power")).unwrap();
    let t = Topology::from_sysfs(&dir).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(t.num_nodes(), 2, "memory-only node2 is left out");
    assert_eq!(t.nodes()[1].os_node, 1);
    assert_eq!(t.node_of_os_cpu(3), Some(1));
    assert_eq!(t.node_of_os_cpu(9), None);
}

#[test]
fn missing_sysfs_is_an_error_so_detect_can_fall_back() {
    let err = Topology::from_sysfs(Path::new("/nonexistent/noderep")).unwrap_err();
    assert!(
        matches!(&err, TopologyError::Unreadable { path, .. } if path == "/nonexistent/noderep"),
        "{err:?}"
    );
    assert!(err.to_string().contains("NODEREP_TOPOLOGY"), "{err}");
}

#[test]
fn detect_finds_at_least_one_node_with_this_machines_cpus() {
    let t = Topology::detect().unwrap();
    assert!(t.num_nodes() >= 1);
    assert!(t.num_cores() >= 1);
}

#[test]
fn interleaved_placement_alternates_nodes() {
    let t = Topology::simulated(2, 2).unwrap();
    let nodes: Vec<usize> = t.placement_order(true).iter().map(|c| c.node).collect();
    assert_eq!(nodes, vec![0, 1, 0, 1]);
    let nodes: Vec<usize> = t.placement_order(false).iter().map(|c| c.node).collect();
    assert_eq!(nodes, vec![0, 0, 1, 1]);
}

#[test]
fn getcpu_reports_a_cpu_this_process_may_use() {
    let loc = current_cpu().expect("getcpu works on Linux");
    pin_to_cpu(loc.cpu).unwrap();
    assert_eq!(current_cpu().unwrap().cpu, loc.cpu);
}

#[test]
fn pinning_to_a_cpu_that_does_not_exist_is_an_error() {
    assert_eq!(
        pin_to_cpu(1000).unwrap_err(),
        TopologyError::Pin { cpu: 1000 }
    );
}

#[cfg(feature = "hwloc")]
#[test]
fn hwloc_reports_the_same_nodes_and_cpus_as_sysfs() {
    let hw = Topology::from_hwloc().expect("hwloc discovers this machine");
    assert_eq!(hw.source(), TopologySource::Hwloc);
    assert!(hw.num_nodes() >= 1 && hw.num_cores() >= 1);
    if let Ok(sys) = Topology::from_sysfs(Path::new("/sys/devices/system/node")) {
        assert_eq!(hw.nodes(), sys.nodes(), "hwloc and sysfs disagree");
    }
}

#[test]
fn pages_are_found_without_touching_them_and_moved_to_a_node() {
    // On its own pinned thread: on a machine with several nodes the pages
    // must not follow a thread that moves.
    let cpu = current_cpu().expect("getcpu works on Linux").cpu;
    std::thread::spawn(move || {
        pin_to_cpu(cpu).unwrap();
        let Some(node) = local_memory_node() else {
            eprintln!("skipped: the kernel does not answer move_pages here (no NUMA support?)");
            return;
        };
        let buf = vec![1u8; 3 * 4096];
        let (start, len) = (buf.as_ptr() as usize, buf.len());
        // Three pages of data start inside a page, so they span three or
        // four; the allocator may have recycled them from another node.
        let on_node = move_to_node(&[(start, len), (start, 1)], node).expect("move_pages answers");
        assert!((3..=4).contains(&on_node), "{on_node} pages");
        assert_eq!(node_of_address(start), Some(node));
        assert_eq!(move_to_node(&[], node), Some(0));
        // 64 MiB: a fresh mapping, its page at 1 MiB never touched.
        let untouched: Vec<u8> = Vec::with_capacity(64 << 20);
        let page = untouched.as_ptr() as usize + (1 << 20);
        assert_eq!(nodes_of_pages(&[page, start]), Some(vec![None, Some(node)]));
        assert_eq!(node_of_address(page), None, "looking does not touch");
    })
    .join()
    .unwrap();
}
