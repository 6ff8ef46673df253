//! `flyby-local`: see [`flyby::local`].

use clap::Parser;
use flyby::local::Args;

fn main() {
    let args = Args::parse();
    println!(
        "flyby-local will serve the proxy on http://{} and the Machines API on http://{} \
         ({} launcher Machines, edge region {}, balance {:?}).",
        args.proxy_addr, args.api_addr, args.launchers, args.edge_region, args.balance
    );
    println!("It is not implemented yet: see the local-platform issue.");
}
