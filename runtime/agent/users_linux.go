package agent

// guestUsers: a Linux guest's users and groups are in its /etc files.
func guestUsers(etc string) userDB { return etcUsers(etc) }

// credentialGroups are the supplementary groups a process is started
// with: on Linux the gid is not among them.
func credentialGroups(gid uint32, groups []uint32) ([]uint32, error) { return groups, nil }
