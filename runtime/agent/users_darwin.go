package agent

// guestUsers: a macOS guest's users and groups are in the directory
// service (users_dir.go); etc is not consulted.
func guestUsers(etc string) userDB { return directoryUsers() }

// credentialGroups are the groups a process is started with: on macOS
// the gid first (processGroups).
func credentialGroups(gid uint32, groups []uint32) ([]uint32, error) {
	return processGroups(gid, groups)
}
