package imagestore_test

func stopBenchRegistry() {}
