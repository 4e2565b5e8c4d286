"""The kernel's FUSE protocol in pure Python, knowing nothing of the union.

abi: the wire format (opcodes, flags, structures). mount: mounting without libfuse (mount(2) or
fusermount3). operations: the `Operations` interface a filesystem implements and its plain values.
requests: one handler an opcode (decode, call Operations, encode). session: the request loop on trio
(the only module here that imports trio).
"""
