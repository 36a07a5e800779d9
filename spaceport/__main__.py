from spaceport.cli import app

app()
