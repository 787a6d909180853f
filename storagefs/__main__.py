from storagefs.cli import main

main()
