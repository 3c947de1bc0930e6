"""Pure scheduling domain of orchestratord: tasks, bounded priority queues, admission,
placement and the dispatch decision.

Nothing here performs I/O, starts threads, uses asyncio or reads a clock: time is passed in
as milliseconds by the caller. That keeps every decision the daemon makes about *which job
runs where and when* deterministic, exhaustively testable and simulable.
"""
