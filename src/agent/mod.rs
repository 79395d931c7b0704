//! The node agent: routes every other node's pod CIDR to that node (host-gw).
