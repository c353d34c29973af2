package rawlb

import "os"

func osPid() int { return os.Getpid() }
