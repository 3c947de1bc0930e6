"""Engine adapters: one module per engine behind one interface (`WorkerAdapter`)."""
